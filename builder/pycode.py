"""What a Python module imports, read as the builder can: from its byte code when the builder's
interpreter wrote that format (fast, and exactly what runs), else from its source; and what a
`python3` command line runs. `builder.entrypoint` follows these to guess a start's files.

Nothing here runs the code it reads: byte code is unmarshalled and scanned, every index it holds
is checked before use, and source is only parsed.
"""

from __future__ import annotations

import ast
import dis
import importlib.util
import marshal
import types
import warnings
from collections.abc import Sequence

_ARGUMENT_OPTIONS = frozenset("WXQ")  # options that take the next argument (`-c` and `-m` are handled apart)


ImportRequest = tuple[str, int, "tuple[str, ...] | None"]  # module, level, from-names (None: a plain import)
_CO_OPTIMIZED = 0x1  # a function's code (a class body's runs when the module does)
_IMPORT_NAME, _LOAD_CONST, _EXTENDED_ARG = (dis.opmap[name] for name in ("IMPORT_NAME", "LOAD_CONST", "EXTENDED_ARG"))


def load_byte_code(data: bytes) -> types.CodeType | None:
    """The module code in a `.pyc`, if this interpreter wrote that format (its magic number).
    The code is only looked at, never run; what it names is checked before it is used."""
    if len(data) < 16 or data[:4] != importlib.util.MAGIC_NUMBER:
        return None
    try:
        code = marshal.loads(data[16:])
    except (ValueError, EOFError, TypeError):
        return None
    return code if isinstance(code, types.CodeType) else None


def byte_code_imports(module: types.CodeType) -> tuple[list[ImportRequest], list[ImportRequest]]:
    """The imports of a module's code: those that run when it is imported (its body and class
    bodies), and those inside functions."""
    module_level: list[ImportRequest] = []
    in_functions: list[ImportRequest] = []
    pending = [(module, False)]
    while pending:
        code, in_function = pending.pop()
        (in_functions if in_function else module_level).extend(_imports_in(code))
        for constant in reversed(code.co_consts):
            if isinstance(constant, types.CodeType):
                pending.append((constant, in_function or bool(constant.co_flags & _CO_OPTIMIZED)))
    return module_level, in_functions


def _imports_in(code: types.CodeType) -> list[ImportRequest]:
    """IMPORT_NAME instructions with the level and from-list loaded just before them."""
    units = code.co_code
    requests: list[ImportRequest] = []
    position = units.find(_IMPORT_NAME)
    while position >= 0:
        if position % 2 == 0:
            argument = units[position + 1]
            if position >= 2 and units[position - 2] == _EXTENDED_ARG:
                argument |= units[position - 1] << 8
            level, names = 0, None
            constants = code.co_consts
            if (
                position >= 4
                and units[position - 2] == _LOAD_CONST
                and units[position - 4] == _LOAD_CONST
                and max(units[position - 3], units[position - 1]) < len(constants)
            ):
                level_constant, names_constant = constants[units[position - 3]], constants[units[position - 1]]
                level = level_constant if isinstance(level_constant, int) and 0 <= level_constant < 64 else 0
                if isinstance(names_constant, tuple):
                    names = tuple(name for name in names_constant if isinstance(name, str))
            if argument < len(code.co_names):
                requests.append((code.co_names[argument], level, names))
        position = units.find(_IMPORT_NAME, position + 1)
    return requests


def python_target(arguments: Sequence[str]) -> tuple[str | None, str | None, str | None]:
    """(script, module, code) of a python3 command line's arguments."""
    position = 0
    while position < len(arguments):
        argument = arguments[position]
        if argument == "--" or not argument.startswith("-") or argument == "-":
            break
        letters = argument[1:]
        for index, letter in enumerate(letters):
            rest = letters[index + 1 :] or (arguments[position + 1] if position + 1 < len(arguments) else "")
            if letter == "m":
                return None, rest or None, None
            if letter == "c":
                return None, None, rest
            if letter in _ARGUMENT_OPTIONS:
                if not letters[index + 1 :]:
                    position += 1
                break
        position += 1
    if position < len(arguments) and arguments[position] == "--":
        position += 1
    script = arguments[position] if position < len(arguments) else None
    return (script if script and script != "-" else None), None, None


def parse_source(source: bytes) -> list[ast.stmt]:
    """The statements of a module's source; none if this interpreter cannot parse it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ast.parse(source).body
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return []


def is_type_checking(test: ast.expr) -> bool:
    """`if TYPE_CHECKING:` (or `typing.TYPE_CHECKING`): false when the program runs."""
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
