# The cffi extension built by native/build.py; its objects are untyped cdata.
from typing import Any

ffi: Any
lib: Any
