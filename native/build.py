"""cffi out-of-line API-mode build of ``blockstore._native`` (pip runs it through setup.py).

The C declarations are the headers beside this file, read here for cffi's cdef, so each contract
lives in one place (as pygit2 keeps its decl/*.h beside its build script): blockstore_native.h
(moving bytes: mirrored writes, copy-on-write, zero detection) and fastpath.h (I/O through a
translation table, and the FUSE callbacks that use it)."""
import os
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))


PARTS = ("blockstore_native", "fastpath")


def declarations() -> str:
    out = []
    for part in PARTS:
        with open(os.path.join(HERE, f"{part}.h")) as f:
            text = re.sub(r"/\*.*?\*/", "", f.read(), flags=re.S)
        for line in text.splitlines():
            # Integer constants reach Python as lib.NAME (cffi's "#define NAME ..."); the other
            # preprocessor lines (include guards, includes) are C's alone.
            const = re.match(r"\s*#define\s+(BS_\w+)\s+\S", line)
            if const:
                out.append(f"#define {const.group(1)} ...")
            elif not line.lstrip().startswith("#"):
                out.append(line)
    return "\n".join(out)


ffi = FFI()
ffi.cdef(declarations())
ffi.set_source(
    "blockstore._native",
    "\n".join(f'#include "{part}.h"' for part in PARTS),
    sources=[os.path.relpath(os.path.join(HERE, f"{part}.c")) for part in PARTS],
    include_dirs=[HERE],
    extra_compile_args=["-O2", "-Wall"],
    libraries=["pthread", "xxhash", "dl"],
)

if __name__ == "__main__":
    ffi.compile(verbose=True)
