"""Build the compiled core ``herdrt._fast`` from ``src/herdrt/_fast.pyx``.

All metadata lives in ``pyproject.toml``; this file only declares the extension.
"""
from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "herdrt._fast",
        ["src/herdrt/_fast.pyx"],
        include_dirs=["src/herdrt"],
        # Cython tracks .pxi includes itself, but not C headers.
        depends=["src/herdrt/_md5.h", "src/herdrt/_msgpack.h"],
        # AES-256-GCM for link records (_records.pxi): OpenSSL's libcrypto (Debian: libssl-dev).
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
