"""Build the compiled core ``herdrt.core._fast`` from ``src/herdrt/core/_fast.pyx``.

All metadata lives in ``pyproject.toml``; this file only declares the extension.
"""
from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "herdrt.core._fast",
        ["src/herdrt/core/_fast.pyx"],
        include_dirs=["src/herdrt/core"],
        # Cython tracks .pxi includes itself, but not C headers.
        depends=["src/herdrt/core/_msgpack.h"],
        # OpenSSL's libcrypto (Debian: libssl-dev): AES-256-GCM for link records (_records.pxi), MD5
        # for the hash ring (_ring.pxi).
        libraries=["crypto"],
        extra_compile_args=["-O3"],
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
        },
    )
)
