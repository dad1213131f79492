"""Only here for cffi: `cffi_modules` builds native._rafs_native; everything else is in pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["native/build.py:ffibuilder"])
