"""cffi out-of-line API-mode build of ``blockstore._native`` (pip runs it through setup.py).

The C declarations are the header beside this file, read here for cffi's cdef, so the contract
lives in one place (as pygit2 keeps its decl/*.h beside its build script)."""
import os
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))


def declarations() -> str:
    with open(os.path.join(HERE, "blockstore_native.h")) as f:
        text = re.sub(r"/\*.*?\*/", "", f.read(), flags=re.S)
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


ffi = FFI()
ffi.cdef(declarations())
ffi.set_source(
    "blockstore._native",
    '#include "blockstore_native.h"',
    sources=[os.path.relpath(os.path.join(HERE, "blockstore_native.c"))],
    include_dirs=[HERE],
    extra_compile_args=["-O2", "-Wall"],
    libraries=["pthread"],
)

if __name__ == "__main__":
    ffi.compile(verbose=True)
