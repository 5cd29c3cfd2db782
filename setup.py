"""cffi_modules has no pyproject.toml equivalent; everything else is in pyproject.toml."""
from setuptools import setup

setup(cffi_modules=["native/build.py:ffi"])
