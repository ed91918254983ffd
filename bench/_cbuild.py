"""Compile a bench-only Cython module (``bench/_c/*.pyx``) into a temporary directory and import it.

These contenders exist to measure the core's C against library paths; they are never part of the
package. Built like the core (``-O3``, the same compiler directives), linked with libcrypto, with
``bench/_c`` on the include path. A failed build raises: a benchmark never skips a contender
silently.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
C_DIR = BENCH / "_c"
DIRECTIVES = {"boundscheck": False, "wraparound": False, "cdivision": True, "language_level": 3}

_built: dict[str, object] = {}


def build(name: str):
    """Import ``bench/_c/<name>.pyx``, compiling it first (once per process)."""
    if name in _built:
        return _built[name]
    from Cython.Build import cythonize
    from setuptools import Distribution, Extension

    source = C_DIR / f"{name}.pyx"
    tmp = Path(tempfile.mkdtemp(prefix=f"herdrt-bench-{name}-"))
    try:
        ext = Extension(
            name,
            [str(source)],
            include_dirs=[str(C_DIR)],
            libraries=["crypto"],
            extra_compile_args=["-O3"],
        )
        logging.getLogger("setuptools").setLevel(logging.WARNING)
        modules = cythonize([ext], build_dir=str(tmp), quiet=True, compiler_directives=DIRECTIVES)
        cmd = Distribution({"ext_modules": modules}).get_command_obj("build_ext")
        cmd.build_lib = cmd.build_temp = str(tmp)
        cmd.ensure_finalized()
        cmd.run()
        path = Path(cmd.get_ext_fullpath(name))
        if not path.exists():
            raise RuntimeError(f"building {source} gave no {path}")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # a loaded extension needs no file
    _built[name] = module
    return module
