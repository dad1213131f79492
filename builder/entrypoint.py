"""Guess which files a container's start reads, from the image's own config and files: the
prefetch list of an image converted without a trace (`nydusify convert --prefetch-policy
entrypoint`, the default).

A cold start without a prefetch list is a chain of misses: the loader maps a library, which
names the next; Python runs a module, which imports the next. Each link costs a round trip, and
nothing in the daemon can know the next file before the previous one is read. The builder can:
it has every file. From the config's `Entrypoint` + `Cmd` (with its `PATH`, `PYTHONPATH`,
`LD_LIBRARY_PATH` and working directory) it follows
- programs: a script's `#!` interpreter (and an entrypoint script's arguments, when they name a
  program: `exec "$@"`); `env`'s command; each simple command of `sh -c` (with its `cd`); an ELF
  file's interpreter and DT_NEEDED libraries, searched as the dynamic loader searches (DT_RPATH,
  LD_LIBRARY_PATH, DT_RUNPATH with `$ORIGIN`, `/etc/ld.so.conf`, the default directories);
- Python: the interpreter's start-up modules (and the locale it loads), then the script's (or
  `-m` module's) imports, found on the interpreter's search path as its import system finds
  them, recursively, in the order they run (`builder.pycode` reads them from byte code or
  source). Imports that run when a module is imported come first; those inside functions after
  them (a start calls some); those under `if TYPE_CHECKING` or in an `except ImportError` whose
  `try` imports resolved never. The listed file is the byte-code cache the interpreter reads
  (`__pycache__/NAME.TAG.pyc`) when there is one; an extension module brings its libraries and
  the modules its compiled code names; a non-extension `lib*.so` inside an imported package
  (loaded with `ctypes`) is followed too.
The program and the libraries it starts with are listed whole: they run at once. A large library
loaded later is listed by the ranges the loader reads in full (headers, dynamic tables, writable
data) where it is met, and its code at the end of the list: code is read page by page as it
runs, so it is fetched after everything else and on-demand reads of it overtake. Its read-only
data (ICU's 30 MB of tables, say) is left to on-demand reads.

It is a guess: what it misses is fetched on demand, and what it lists wrongly costs bandwidth,
not correctness. Nothing here raises for odd files; a file that cannot be read or parsed is
listed and not followed. `Limits` bounds the files looked at, the bytes listed and the source
parsed, so a conversion's time stays bounded and its output is the same on any machine.
"""

from __future__ import annotations

import ast
import functools
import posixpath
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from builder.elf import ELF_MAGIC, parse_dynamic
from builder.pycode import (
    byte_code_imports,
    is_type_checking,
    load_byte_code,
    parse_source,
    python_target,
)
from rafs.pathlist import PrefetchEntry
from rafs.tree import FsNode

_MAX_SYMLINK_HOPS = 40
_MAX_SOURCE_BYTES = 4 << 20  # a Python source larger than this is listed, not parsed
_WHOLE_ELF_BYTES = 2 << 20  # ELF files up to this size are listed whole
_MAX_EXTENSION_SCAN_BYTES = 16 << 20  # a compiled module larger than this is not searched for imports
_DOTTED_NAME = re.compile(rb"(?<![\w.])[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+(?![\w.])")  # a module name in byte code
_PYTHON_NAME = re.compile(r"python(\d)(?:\.(\d+))?")
_MULTIARCH_BY_MACHINE = {
    62: "x86_64-linux-gnu",
    183: "aarch64-linux-gnu",
    3: "i386-linux-gnu",
    40: "arm-linux-gnueabihf",
}
# Read at every Python start before `site` (imported by the interpreter itself, not by a statement)
_PYTHON_START_MODULES = ("encodings", "encodings.aliases", "encodings.utf_8", "site", "sitecustomize")
_SHELLS = frozenset(("sh", "bash", "dash", "ash", "zsh", "busybox"))
_MAX_COMMAND_DEPTH = 8  # programs that run programs: a script, its interpreter, `env`, `sh -c`


@dataclass(frozen=True)
class StartCommand:
    """How the container starts: the process arguments and environment of the image config."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    working_dir: str = "/"

    @classmethod
    def from_image_config(cls, image_config: Mapping[str, object]) -> StartCommand | None:
        """From an OCI image config (`config.Entrypoint`, `Cmd`, `Env`, `WorkingDir`); None when
        it names no command."""
        section = image_config.get("config")
        if not isinstance(section, Mapping):
            return None
        argv = [*_strings(section.get("Entrypoint")), *_strings(section.get("Cmd"))]
        if not argv:
            return None
        env = dict(item.split("=", 1) for item in _strings(section.get("Env")) if "=" in item)
        working_dir = section.get("WorkingDir")
        return cls(tuple(argv), env, working_dir if isinstance(working_dir, str) and working_dir else "/")


@dataclass(frozen=True)
class Limits:
    """Bounds on one guess: files looked at, bytes listed (the prefetch it asks for), and Python
    source parsed. Parsing is the slow part (about 3 MB/s), needed where the image's byte code
    is not the builder's interpreter's format; the bound keeps a conversion's time in check and
    its output the same on any machine (a byte count, not a clock)."""

    max_files: int = 20_000
    max_listed_bytes: int = 1 << 30
    max_parsed_source_bytes: int = 64 << 20


def _strings(value: object) -> list[str]:
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


class TreeFiles:
    """Read-only path access to a built tree: symlinks resolved as the kernel would inside the
    container's root, contents read through `read_content(node, offset, size)`."""

    def __init__(self, root: FsNode, read_content: Callable[[FsNode, int, int], bytes]) -> None:
        self.root = root
        self._read_content = read_content

    def resolve(self, path: str) -> tuple[str, FsNode] | None:
        """The path with every symlink resolved and its node; None if missing or looping."""
        node = self.root
        resolved: list[str] = []
        pending = [part for part in path.split("/") if part]
        pending.reverse()
        hops = 0
        while pending:
            part = pending.pop()
            if part == ".":
                continue
            if part == "..":
                if resolved:
                    resolved.pop()
                node = self._walk(resolved)
                continue
            child = node.children.get(part.encode("utf-8", "surrogateescape")) if node.is_dir else None
            if child is None:
                return None
            if child.is_symlink:
                hops += 1
                if hops > _MAX_SYMLINK_HOPS:
                    return None
                target = child.symlink_target.decode("utf-8", "surrogateescape")
                if target.startswith("/"):
                    resolved = []
                pending.extend(reversed([piece for piece in target.split("/") if piece]))
                node = self._walk(resolved)
                continue
            resolved.append(part)
            node = child
        return "/" + "/".join(resolved), node

    def _walk(self, parts: list[str]) -> FsNode:
        node = self.root
        for part in parts:
            node = node.children[part.encode("utf-8", "surrogateescape")]
        return node

    def file(self, path: str) -> tuple[str, FsNode] | None:
        found = self.resolve(path)
        return found if found is not None and found[1].is_reg else None

    def directory(self, path: str) -> tuple[str, FsNode] | None:
        found = self.resolve(path)
        return found if found is not None and found[1].is_dir else None

    def names(self, path: str) -> list[str]:
        found = self.directory(path)
        if found is None:
            return []
        return sorted(name.decode("utf-8", "surrogateescape") for name in found[1].children)

    def read(self, node: FsNode, offset: int, size: int) -> bytes:
        size = max(0, min(size, node.size - offset))
        return self._read_content(node, offset, size) if size else b""


@dataclass
class _Module:
    name: str
    file: str | None  # the source, extension or byte-code file; None for a namespace package
    search_path: tuple[str, ...]  # where its submodules are: its directories if a package, else ()


class StartGuess:
    """One guess: the entries listed so far, in the order the start would read them."""

    def __init__(self, files: TreeFiles, command: StartCommand, limits: Limits) -> None:
        self.files = files
        self.command = command
        self.limits = limits
        self.entries: list[PrefetchEntry] = []
        self.listed_bytes = 0
        self._looked_at = 0
        self._seen: set[str] = set()
        self._modules: dict[str, _Module | None] = {}
        self._visited_modules: set[str] = set()
        self._sources_run: set[str] = set()  # Python sources whose imports were followed
        self._parsed_bytes = 0
        self._library_dirs: list[str] | None = None
        self._python_tag = ""
        self._extension_cache: dict[str, dict[str, str]] = {}
        self._python_path: tuple[str, ...] = ()
        # large ELF files and their code, listed at the end (path, file, code ranges)
        self._code_last: list[tuple[str, FsNode, list[tuple[int, int]]]] = []
        # function bodies met in the first wave; None once the second wave runs
        self._deferred: list[Callable[[], object]] | None = []

    # ---- what is listed
    def _budget_left(self) -> bool:
        return self._looked_at < self.limits.max_files and self.listed_bytes < self.limits.max_listed_bytes

    def _list(self, path: str, node: FsNode, ranges: Sequence[tuple[int, int]] | None = None) -> None:
        encoded = path.encode("utf-8", "surrogateescape")
        if ranges is None:
            self.entries.append(PrefetchEntry(encoded))
            self.listed_bytes += node.size
            return
        for start, end in ranges:
            if end > start:
                self.entries.append(PrefetchEntry(encoded, start, end))
                self.listed_bytes += end - start

    def _first_visit(self, path: str) -> bool:
        if path in self._seen or not self._budget_left():
            return False
        self._seen.add(path)
        self._looked_at += 1
        return True

    # ---- programs
    def run(self) -> list[PrefetchEntry]:
        self._command(list(self.command.argv), self.command.working_dir, depth=0)
        for path, node, code in self._code_last:  # what readahead would fetch of them, ahead of it
            if self.listed_bytes < self.limits.max_listed_bytes:
                self._list(path, node, code)
        return self.entries

    def _command(self, argv: list[str], cwd: str, depth: int) -> None:
        """Follow one command line: its program, and what that program will run in turn."""
        if not argv or depth > _MAX_COMMAND_DEPTH:
            return
        program = self._find_program(argv[0], cwd)
        if program is None:
            return
        path, node = program
        head = self.files.read(node, 0, 256)
        if head.startswith(b"#!"):
            self._list_once(path, node)
            interpreter = head[2:].split(b"\n", 1)[0].decode("utf-8", "replace").split()
            self._command([*interpreter, path, *argv[1:]], cwd, depth + 1)
            if len(argv) > 1 and self._find_program(argv[1], cwd) is not None:
                # an entrypoint script's arguments are most often the command it ends with (`exec "$@"`)
                self._command(argv[1:], cwd, depth + 1)
            return
        self._elf(path, node, executed=True)
        invoked = {posixpath.basename(argv[0]), posixpath.basename(path)}
        if "env" in invoked:
            self._command(_after_env(argv[1:]), cwd, depth + 1)
        elif invoked & _SHELLS and "-c" in argv[1:]:
            script = argv[argv.index("-c", 1) + 1] if argv.index("-c", 1) + 1 < len(argv) else ""
            for words in _shell_commands(script):
                if words[0] == "cd" and len(words) == 2:
                    cwd = posixpath.join(cwd, words[1])
                else:
                    self._command(words, cwd, depth + 1)
        else:
            self._maybe_python(path, argv, cwd)

    def _find_program(self, name: str, cwd: str) -> tuple[str, FsNode] | None:
        if "/" in name:
            return self.files.file(posixpath.join(cwd, name))
        for directory in self.command.env.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(":"):
            found = self.files.file(posixpath.join(directory or ".", name))
            if found is not None:
                return found
        return None

    def _list_once(self, path: str, node: FsNode) -> None:
        if self._first_visit(path):
            self._list(path, node)

    # ---- ELF files and their libraries
    def _elf(self, path: str, node: FsNode, *, executed: bool = False) -> None:
        """List `path` and, breadth first as the loader maps them, every library it needs. An
        `executed` program and its libraries are listed whole: its code runs from the first
        instruction on. A library loaded later (an extension module) is listed by its load
        ranges, its code at the end of the list."""
        queue = [(path, node)]
        while queue:
            current_path, current = queue.pop(0)
            if not self._first_visit(current_path):
                continue
            info = None
            if self.files.read(current, 0, 4) == ELF_MAGIC:
                info = parse_dynamic(functools.partial(self.files.read, current), current.size)
            if info is None or executed or current.size <= _WHOLE_ELF_BYTES:
                self._list(current_path, current)
            else:
                self._list(current_path, current, info.load_ranges())
                self._code_last.append((current_path, current, info.code_ranges()))
            if info is None:
                continue
            if info.interpreter:
                found = self.files.file(info.interpreter)
                if found is not None:
                    queue.append(found)
            origin = posixpath.dirname(current_path)
            for library in info.needed:
                found = self._find_library(library, origin, info.rpath, info.runpath, info.machine)
                if found is not None:
                    queue.append(found)

    def _find_library(
        self, name: str, origin: str, rpath: Sequence[str], runpath: Sequence[str], machine: int
    ) -> tuple[str, FsNode] | None:
        if "/" in name:
            return self.files.file(name)
        searched = [*(rpath if not runpath else ()), *self.command.env.get("LD_LIBRARY_PATH", "").split(":")]
        searched += [*runpath, *self._system_library_dirs(machine)]
        for directory in searched:
            if not directory:
                continue
            directory = directory.replace("$ORIGIN", origin).replace("${ORIGIN}", origin)
            found = self.files.file(posixpath.join(directory, name))
            if found is not None:
                return found
        return None

    def _system_library_dirs(self, machine: int) -> list[str]:
        """`/etc/ld.so.conf` (and its includes), then the loader's built-in directories."""
        if self._library_dirs is None:
            directories: list[str] = []
            self._read_ld_conf("/etc/ld.so.conf", directories, depth=0)
            multiarch = _MULTIARCH_BY_MACHINE.get(machine)
            if multiarch:
                directories += [f"/lib/{multiarch}", f"/usr/lib/{multiarch}"]
            directories += ["/lib64", "/usr/lib64", "/lib", "/usr/lib"]
            self._library_dirs = directories
        return self._library_dirs

    def _read_ld_conf(self, path: str, directories: list[str], depth: int) -> None:
        found = self.files.file(path)
        if found is None or depth > 4:
            return
        for line in self.files.read(found[1], 0, 64 << 10).decode("utf-8", "replace").splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("include "):
                pattern = line[len("include ") :].strip()
                if not pattern.startswith("/"):
                    pattern = posixpath.join(posixpath.dirname(path), pattern)
                directory, _, glob = pattern.rpartition("/")
                expression = re.compile(re.escape(glob).replace(r"\*", ".*").replace(r"\?", "."))
                for name in self.files.names(directory):
                    if expression.fullmatch(name):
                        self._read_ld_conf(f"{directory}/{name}", directories, depth + 1)
            elif line.startswith("/"):
                directories.append(line)

    # ---- Python
    def _maybe_python(self, executable: str, argv: list[str], cwd: str) -> None:
        match = _PYTHON_NAME.fullmatch(posixpath.basename(executable))
        if match is None or match[1] != "3":
            return
        version = match[2] or self._installed_python_minor(executable)
        if version is None:
            return
        self._python_tag = f"cpython-3{version}"
        script, module, code = python_target(argv[1:])
        first_entry = posixpath.dirname(posixpath.join(cwd, script)) if script else ""
        self._python_path = (
            *([first_entry] if first_entry else []),
            *(part for part in self.command.env.get("PYTHONPATH", "").split(":") if part.startswith("/")),
            *self._python_site_path(executable, self._invoked_as(argv[0], cwd), version),
        )
        for start_module in _PYTHON_START_MODULES:
            self._import(start_module)
        for directory in self._python_path:
            for name in self.files.names(directory):
                if name.endswith(".pth"):
                    found = self.files.file(f"{directory}/{name}")
                    if found is not None:
                        self._list_once(*found)
        self._locale(executable)
        if script:
            found = self.files.file(posixpath.join(cwd, script))
            if found is not None:
                self._python_source(found[0], found[1], "__main__", package="")
        elif module:
            self._import("runpy")
            self._import(module)
        elif code:
            self._python_statements(parse_source(code.encode()), "__main__", package="")
        self._function_imports()

    def _locale(self, executable: str) -> None:
        """The locale the C library loads: the environment's, or C.UTF-8, which the interpreter
        switches to when none is set (PEP 538); and the character-set converters' cache."""
        env = self.command.env
        name = env.get("LC_ALL") or env.get("LC_CTYPE") or env.get("LANG") or "C.UTF-8"
        if name in ("C", "POSIX"):
            name = "C.UTF-8"
        language, _, charset = name.partition(".")
        directory = (
            f"/usr/lib/locale/{language}.{charset.lower().replace('-', '')}"
            if charset
            else f"/usr/lib/locale/{language}"
        )
        self._list_tree(directory, depth=2)
        for library_dir in self._system_library_dirs(_machine_of(self.files, executable)):
            found = self.files.file(f"{library_dir}/gconv/gconv-modules.cache")
            if found is not None:
                self._list_once(*found)
                break

    def _list_tree(self, directory: str, depth: int) -> None:
        for name in self.files.names(directory):
            path = f"{directory}/{name}"
            found = self.files.file(path)
            if found is not None:
                self._list_once(*found)
            elif depth > 0:
                self._list_tree(path, depth - 1)

    def _installed_python_minor(self, executable: str) -> str | None:
        prefix = posixpath.dirname(posixpath.dirname(executable))
        minors = [
            int(name[len("python3.") :])
            for name in self.files.names(f"{prefix}/lib")
            if re.fullmatch(r"python3\.\d+", name) and self.files.file(f"{prefix}/lib/{name}/os.py")
        ]
        return str(max(minors)) if minors else None

    def _invoked_as(self, name: str, cwd: str) -> str:
        """The path a program was run by, its last symlink not followed: a virtual environment's
        `bin/python` is a link to the base interpreter, and the environment is found beside it."""
        if "/" in name:
            return posixpath.join(cwd, name)
        for directory in self.command.env.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(":"):
            if self.files.file(posixpath.join(directory or ".", name)) is not None:
                return posixpath.join(directory or ".", name)
        return name

    def _python_site_path(self, executable: str, invoked: str, version: str) -> list[str]:
        """The interpreter's own search path: its standard library, then site directories (Debian's
        `dist-packages`, upstream's `site-packages`, a virtual environment's, found by the
        `pyvenv.cfg` above the path it was run by)."""
        prefix = posixpath.dirname(posixpath.dirname(executable))
        library = f"{prefix}/lib/python3.{version}"
        candidates = [f"{library}", f"{library}/lib-dynload"]
        environment = self.files.file(f"{posixpath.dirname(posixpath.dirname(invoked))}/pyvenv.cfg")
        if environment is not None:
            candidates.append(posixpath.dirname(environment[0]) + f"/lib/python3.{version}/site-packages")
        candidates += [
            f"/usr/local/lib/python3.{version}/dist-packages",
            "/usr/lib/python3/dist-packages",
            f"/usr/lib/python3.{version}/dist-packages",
            f"{library}/site-packages",
        ]
        path: list[str] = []
        for candidate in candidates:
            found = self.files.directory(candidate)
            if found is not None and found[0] not in path:
                path.append(found[0])
        return path

    def _import(self, dotted: str) -> bool:
        """Run `import dotted` as the interpreter would: each parent package first. True if found."""
        parts = dotted.split(".")
        for end in range(1, len(parts) + 1):
            module = self._find_module(".".join(parts[:end]))
            if module is None:
                return False
            self._run_module(module)
        return True

    def _find_module(self, dotted: str) -> _Module | None:
        if dotted in self._modules:
            return self._modules[dotted]
        parent_name, _, name = dotted.rpartition(".")
        if parent_name:
            parent = self._find_module(parent_name)
            search_path = parent.search_path if parent is not None else ()
        else:
            search_path = self._python_path
        module = self._find_in(dotted, name, search_path) if name.isidentifier() else None
        self._modules[dotted] = module
        return module

    def _find_in(self, dotted: str, name: str, search_path: Sequence[str]) -> _Module | None:
        """As the import system's path finder: per directory, a package, then an extension, a
        source or a byte-code file; a directory without `__init__` is a namespace package only if
        nothing else is found."""
        namespace: list[str] = []
        for directory in search_path:
            package = self.files.directory(f"{directory}/{name}")
            if package is not None:
                initial = self._module_file(package[0], "__init__")
                if initial is not None:
                    return _Module(dotted, initial, (package[0],))
                namespace.append(package[0])
            module_file = self._module_file(directory, name)
            if module_file is not None:
                return _Module(dotted, module_file, ())
        return _Module(dotted, None, tuple(namespace)) if namespace else None

    def _module_file(self, directory: str, name: str) -> str | None:
        extension = self._extensions_in(directory).get(name)
        if extension is not None:
            return f"{directory}/{extension}"
        for suffix in (".py", ".pyc"):
            if self.files.file(f"{directory}/{name}{suffix}") is not None:
                return f"{directory}/{name}{suffix}"  # as found, not resolved: `__pycache__` is beside it
        return None

    def _extensions_in(self, directory: str) -> dict[str, str]:
        """Module name -> file name of the extension modules in `directory` (cached: a site
        directory is looked in for every top-level import)."""
        extensions = self._extension_cache.get(directory)
        if extensions is None:
            extensions = {}
            for name in self.files.names(directory):
                stem, dot, suffix = name.partition(".")
                if dot and stem.isidentifier() and self._is_extension_suffix("." + suffix):
                    extensions.setdefault(stem, name)
            self._extension_cache[directory] = extensions
        return extensions

    def _is_extension_suffix(self, suffix: str) -> bool:
        if suffix in (".abi3.so", ".so"):
            return True
        return bool(self._python_tag) and suffix.startswith(f".{self._python_tag}-") and suffix.endswith(".so")

    def _run_module(self, module: _Module) -> None:
        if module.name in self._visited_modules or not self._budget_left():
            return
        self._visited_modules.add(module.name)
        is_package = bool(module.search_path)
        package = module.name if is_package else module.name.rpartition(".")[0]
        if module.file is None:
            return
        found = self.files.file(module.file)
        if found is None:
            return
        if module.file.endswith(".py"):
            self._python_source(module.file, found[1], module.name, package)
        elif module.file.endswith(".so"):
            self._elf(*found)
            self._extension_imports(found[1], module.name)
        else:
            self._list_once(*found)
        for directory in module.search_path:
            for name in self.files.names(directory):
                if name.startswith("lib") and ".so" in name and ".cpython-" not in name and ".abi3." not in name:
                    library = self.files.file(f"{directory}/{name}")
                    if library is not None:
                        self._elf(*library)

    def _extension_imports(self, node: FsNode, name: str) -> None:
        """What a compiled (Cython) module imports when it is loaded: its code names the modules
        as strings. Taken are dotted names under its own top-level package or one imported
        before it, that are modules of the image."""
        if node.size > _MAX_EXTENSION_SCAN_BYTES:
            return
        top_levels = {name.partition(".")[0]} | {visited.partition(".")[0] for visited in self._visited_modules}
        for match in dict.fromkeys(_DOTTED_NAME.findall(self.files.read(node, 0, node.size))):
            dotted = match.decode("ascii")
            if dotted.partition(".")[0] in top_levels and dotted != name and self._find_module(dotted) is not None:
                self._import(dotted)

    def _python_source(self, path: str, node: FsNode, name: str, package: str) -> None:
        """List what the interpreter reads for the module at `path` (as found on the search path)
        and run its imports."""
        if path in self._sources_run or not self._budget_left():
            return
        self._sources_run.add(path)
        directory, file_name = posixpath.split(path)
        cached = self.files.file(f"{directory}/__pycache__/{file_name[:-3]}.{self._python_tag}.pyc")
        if name != "__main__" and cached is not None and self._python_tag:
            self._list_once(*cached)
        else:  # a script (perhaps listed already, as the program a `#!` names) is read as source
            resolved = self.files.file(path)
            self._list_once(resolved[0] if resolved else path, node)
        if cached is not None and cached[1].size <= _MAX_SOURCE_BYTES:
            code = load_byte_code(self.files.read(cached[1], 0, cached[1].size))
            if code is not None:  # byte code this interpreter reads: 50x faster than parsing
                module_level, in_functions = byte_code_imports(code)
                for requested, level, names in module_level:
                    self._request(requested, level, names, package)
                if self._deferred is not None:
                    for requested, level, names in in_functions:
                        self._deferred.append(functools.partial(self._request, requested, level, names, package))
                return
        if node.size <= _MAX_SOURCE_BYTES and self._parsed_bytes + node.size <= self.limits.max_parsed_source_bytes:
            self._parsed_bytes += node.size
            self._python_statements(parse_source(self.files.read(node, 0, node.size)), name, package)

    def _request(self, requested: str, level: int, names: tuple[str, ...] | None, package: str) -> bool:
        """One import as byte code asks for it: `import requested` when `names` is None, else
        `from <level dots>requested import names`."""
        if names is None and not level:
            return self._import(requested)
        return self._import_from(
            ast.ImportFrom(requested or None, [ast.alias(name) for name in names or ()], level), package
        )

    def _python_statements(self, statements: Sequence[ast.stmt], name: str, package: str) -> bool:
        """Run the imports among `statements` that run at import time; True if all were found."""
        all_found = True
        for statement in statements:
            if isinstance(statement, ast.Import):
                for alias in statement.names:
                    all_found &= self._import(alias.name)
            elif isinstance(statement, ast.ImportFrom):
                all_found &= self._import_from(statement, package)
            elif isinstance(statement, ast.If):
                if not is_type_checking(statement.test):
                    all_found &= self._python_statements(statement.body, name, package)
                all_found &= self._python_statements(statement.orelse, name, package)
            elif isinstance(statement, ast.Try | ast.TryStar):
                body_found = self._python_statements(statement.body, name, package)
                if not body_found:
                    for handler in statement.handlers:
                        self._python_statements(handler.body, name, package)
                all_found &= self._python_statements([*statement.orelse, *statement.finalbody], name, package)
            elif isinstance(statement, ast.With | ast.For | ast.While | ast.ClassDef):
                all_found &= self._python_statements(statement.body, name, package)
            elif isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef) and self._deferred is not None:
                self._deferred.append(functools.partial(self._python_statements, statement.body, name, package))
        return all_found

    def _function_imports(self) -> None:
        """The second wave: imports inside the functions of the modules found so far (a start
        calls some of them: `argparse` imports `shutil` when a parser is made), with what they
        import at module level. Functions of the modules this wave adds are not followed."""
        deferred, self._deferred = self._deferred or [], None
        for run_imports in deferred:
            run_imports()

    def _import_from(self, statement: ast.ImportFrom, package: str) -> bool:
        if statement.level:
            parts = package.split(".") if package else []
            if statement.level - 1 > len(parts) or not parts:
                return False
            base = ".".join(parts[: len(parts) - (statement.level - 1)])
            target = f"{base}.{statement.module}" if statement.module else base
        elif statement.module:
            target = statement.module
        else:
            return False
        if not self._import(target):
            return False
        for alias in statement.names:
            if alias.name != "*" and self._find_module(f"{target}.{alias.name}") is not None:
                self._import(f"{target}.{alias.name}")
        return True


def _after_env(arguments: Sequence[str]) -> list[str]:
    """The command `env [OPTION]... [NAME=VALUE]... COMMAND...` runs (`#!/usr/bin/env python3`)."""
    position = 0
    while position < len(arguments):
        argument = arguments[position]
        if argument in ("-u", "--unset", "-C", "--chdir"):
            position += 2
        elif argument.startswith("-S") and len(argument) > 2:
            return [*argument[2:].split(), *arguments[position + 1 :]]
        elif argument in ("-S", "--split-string") and position + 1 < len(arguments):
            return [*arguments[position + 1].split(), *arguments[position + 2 :]]
        elif argument.startswith("-") or _is_assignment(argument):
            position += 1
        else:
            return list(arguments[position:])
    return []


def _is_assignment(word: str) -> bool:
    name, equals, _ = word.partition("=")
    return bool(equals) and name.isidentifier()


def _shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a `sh -c` string, in order, each without its leading `exec` and
    variable assignments (`cd /app && exec gunicorn app:main`). Quoting as the shell would;
    anything it cannot split yields nothing."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:
        return []
    commands: list[list[str]] = []
    words: list[str] = []
    for token in [*tokens, ";"]:
        if token and all(character in "();<>|&" for character in token):
            while words and (words[0] in ("exec", "command", "nohup") or _is_assignment(words[0])):
                words.pop(0)
            if words:
                commands.append(words)
            words = []
        else:
            words.append(token)
    return commands


def _machine_of(files: TreeFiles, path: str) -> int:
    found = files.file(path)
    if found is None:
        return 0
    info = parse_dynamic(functools.partial(files.read, found[1]), found[1].size)
    return info.machine if info is not None else 0


def guess_start_files(files: TreeFiles, command: StartCommand, limits: Limits | None = None) -> list[PrefetchEntry]:
    """The prefetch list for `command`'s start: files (or ranges) in the order it reads them."""
    return StartGuess(files, command, limits or Limits()).run()
