"""The prefetch list guessed from an image's start command (`builder.entrypoint`), through real
builds: which files it lists, in which order, and that their chunks lead the blob."""

from __future__ import annotations

import importlib.util
import py_compile
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from builder.build import BuildOptions
from builder.elf import parse_dynamic
from builder.entrypoint import Limits, StartCommand, TreeFiles, guess_start_files
from rafs.mapped import open_bootstrap
from rafs.tree import FsNode, new_directory
from tests.builder.common import build_layers, unpacked, write_layers
from tests.reference import Entry, apply_layers, diff, snapshot_tree
from tests.strategies import layer_stacks

PATH_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
STDLIB = "usr/lib/python3.11"
SITE = "usr/lib/python3/dist-packages"


def _file(path: str, text: str | bytes) -> Entry:
    return Entry(path, "file", data=text.encode() if isinstance(text, str) else text)


def _python_image(tmp_path: Path) -> list[Entry]:
    """A small Python install: stdlib, a site package, an app, byte code for some of it."""
    compiled = tmp_path / "compiled"
    compiled.mkdir()
    (compiled / "os.py").write_text("import stat\nimport posixpath\n")
    py_compile.compile(str(compiled / "os.py"), cfile=str(compiled / "os.pyc"), doraise=True)
    foreign_pyc = b"\x00\x00\r\n" + bytes(12) + b"not byte code of this interpreter"
    return [
        Entry("usr", "dir", perm=0o755),
        Entry("usr/bin", "dir", perm=0o755),
        Entry("usr/bin/python3", "symlink", target="python3.11"),
        _file("usr/bin/python3.11", b"\x7fELF-not-really"),
        # the source differs from its byte code: which one the imports were read from shows
        _file(f"{STDLIB}/os.py", "import posixpath\nimport only_in_source\n"),
        _file(f"{STDLIB}/only_in_source.py", ""),
        _file(f"{STDLIB}/__pycache__/os.cpython-311.pyc", (compiled / "os.pyc").read_bytes()),
        _file(f"{STDLIB}/stat.py", ""),
        _file(f"{STDLIB}/posixpath.py", "import genericpath\n"),
        _file(f"{STDLIB}/__pycache__/posixpath.cpython-311.pyc", foreign_pyc),  # parsed from source instead
        _file(f"{STDLIB}/genericpath.py", ""),
        _file(f"{STDLIB}/site.py", "import os\n"),
        _file(f"{STDLIB}/encodings/__init__.py", "import codecs\n"),
        _file(f"{STDLIB}/encodings/aliases.py", ""),
        _file(f"{STDLIB}/encodings/utf_8.py", ""),
        _file(f"{STDLIB}/codecs.py", "import _codecs_helper\n"),
        # this interpreter's magic number, then no byte code: the imports come from the source
        _file(
            f"{STDLIB}/__pycache__/codecs.cpython-311.pyc", importlib.util.MAGIC_NUMBER + bytes(12) + b"\xff\x00junk"
        ),
        _file(f"{STDLIB}/_codecs_helper.py", ""),
        _file(f"{STDLIB}/json/__init__.py", "from .decoder import JSONDecoder\n"),
        _file(f"{STDLIB}/json/decoder.py", "import re\n"),
        _file(f"{STDLIB}/re.py", ""),
        _file(f"{STDLIB}/unused.py", ""),
        _file(
            f"{SITE}/pkg/__init__.py",
            "from . import sub\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import typed\n",
        ),
        _file(f"{SITE}/pkg/sub.py", "def later():\n    import lazy\n"),
        _file(f"{SITE}/lazy.py", "import lazy_dependency\n"),
        _file(f"{SITE}/lazy_dependency.py", ""),
        _file(f"{SITE}/typed.py", ""),
        _file(f"{SITE}/slow.py", ""),
        _file(f"{SITE}/never.py", ""),
        _file(
            "app/main.py",
            "import json\nimport pkg\n"
            "try:\n    import fast\nexcept ImportError:\n    import slow\n"
            "try:\n    import re\nexcept ImportError:\n    import never\n",
        ),
    ]


def _listed(bootstrap_path: str) -> list[str]:
    bootstrap = open_bootstrap(bootstrap_path)
    names = {ino: path for path, ino in bootstrap.walk()}
    return [names[ino].decode() for ino in bootstrap.prefetch_inodes()]


def test_python_start_lists_what_runs_in_the_order_it_runs(tmp_path: Path) -> None:
    layers = write_layers(str(tmp_path), [_python_image(tmp_path)])
    command = StartCommand(("python3", "/app/main.py"), PATH_ENV)
    bootstrap, _, result = build_layers(str(tmp_path), layers, BuildOptions(start_command=command))
    listed = _listed(bootstrap)
    assert result.start_files == len(listed)
    assert listed[0] == "/usr/bin/python3.11"  # the program, its symlink resolved
    not_run = ("unused.py", "only_in_source.py", "os.py")
    for path in (*(f"/{STDLIB}/{name}" for name in not_run), f"/{SITE}/typed.py", f"/{SITE}/never.py"):
        assert path not in listed
    in_order = [
        f"/{STDLIB}/encodings/__init__.py",
        f"/{STDLIB}/__pycache__/codecs.cpython-311.pyc",
        f"/{STDLIB}/_codecs_helper.py",
        f"/{STDLIB}/site.py",
        f"/{STDLIB}/__pycache__/os.cpython-311.pyc",  # the byte code the interpreter reads
        f"/{STDLIB}/stat.py",  # an import read out of that byte code
        # byte code of another interpreter (the image's, not the builder's): listed, and the
        # imports are read from the source instead
        f"/{STDLIB}/__pycache__/posixpath.cpython-311.pyc",
        f"/{STDLIB}/genericpath.py",
        "/app/main.py",
        f"/{STDLIB}/json/__init__.py",
        f"/{STDLIB}/json/decoder.py",
        f"/{STDLIB}/re.py",
        f"/{SITE}/pkg/__init__.py",
        f"/{SITE}/pkg/sub.py",
        f"/{SITE}/slow.py",  # `fast` is missing, so the except branch runs
        f"/{SITE}/lazy.py",  # imported inside a function: after everything imported at module level
        f"/{SITE}/lazy_dependency.py",
    ]
    assert [path for path in listed if path in in_order] == in_order


@pytest.mark.parametrize(
    ("argv", "working_dir", "first"),
    [
        (("/bin/sh", "-c", "cd /app && exec env DEBUG=1 python3 -u main.py --port 80"), "/", "/bin/sh"),
        (("/entry.sh", "python3", "main.py"), "/app", "/entry.sh"),  # an entrypoint script, then CMD
        (("/app/tool", "--flag"), "/", "/app/tool"),  # `#!/usr/bin/env python3`
    ],
)
def test_commands_that_run_python_lead_to_its_modules(
    tmp_path: Path, argv: tuple[str, ...], working_dir: str, first: str
) -> None:
    """Through `sh -c` (cd, exec, env, assignments), an entrypoint script whose arguments are
    the command, and a script whose `#!` is `/usr/bin/env python3`."""
    image = [
        *_python_image(tmp_path),
        Entry("bin", "dir", perm=0o755),
        _file("bin/sh", b"a shell"),
        _file("usr/bin/env", b"env"),
        Entry("entry.sh", "file", perm=0o755, data=b'#!/bin/sh\nset -e\nexec "$@"\n'),
        Entry("app/tool", "file", perm=0o755, data=b"#!/usr/bin/env python3\nimport json\n"),
    ]
    layers = write_layers(str(tmp_path), [image])
    command = StartCommand(argv, PATH_ENV, working_dir=working_dir)
    bootstrap, _, _ = build_layers(str(tmp_path), layers, BuildOptions(start_command=command))
    listed = _listed(bootstrap)
    assert listed[0] == first
    assert "/usr/bin/python3.11" in listed and f"/{STDLIB}/json/decoder.py" in listed
    if first != "/app/tool":
        assert f"/{SITE}/pkg/sub.py" in listed  # main.py's imports: found with the right directory


def test_no_command_and_none_policy_list_nothing(tmp_path: Path) -> None:
    layers = write_layers(str(tmp_path), [_python_image(tmp_path)])
    bootstrap, _, result = build_layers(str(tmp_path), layers, BuildOptions())
    assert _listed(bootstrap) == [] and result.start_files == 0
    missing = StartCommand(("no-such-program",), PATH_ENV)
    bootstrap, _, _ = build_layers(str(tmp_path), layers, BuildOptions(start_command=missing), name="missing")
    assert _listed(bootstrap) == []


def test_listed_files_lead_the_blob(tmp_path: Path) -> None:
    layers = write_layers(str(tmp_path), [_python_image(tmp_path)])
    command = StartCommand(("python3", "/app/main.py"), PATH_ENV)
    bootstrap_path, _, _ = build_layers(str(tmp_path), layers, BuildOptions(start_command=command))
    bootstrap = open_bootstrap(bootstrap_path)
    listed = set(bootstrap.prefetch_inodes())
    offsets = {
        ino: min(chunk.compressed_offset for chunk in bootstrap.chunks(ino))
        for _, ino in bootstrap.walk()
        if bootstrap.inode(ino).is_reg and not bootstrap.inode(ino).flags and list(bootstrap.chunks(ino))
    }
    stored = {ino: offset for ino, offset in offsets.items() if not next(iter(bootstrap.chunks(ino))).is_zero}
    assert max(stored[ino] for ino in listed if ino in stored) < min(
        offset for ino, offset in stored.items() if ino not in listed
    )


def _compile(source: Path, output: Path, *flags: str) -> None:
    subprocess.run(["gcc", "-O0", "-o", str(output), str(source), *flags], check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc (scripts/install.sh installs it)")
def test_programs_bring_their_interpreter_and_libraries(tmp_path: Path) -> None:
    """A shell script's `#!` program, that program's DT_NEEDED library found through its
    `$ORIGIN` run path, breadth first; a library nobody needs is not listed."""
    (tmp_path / "dep.c").write_text("int dep(void) { return 7; }\n")
    (tmp_path / "main.c").write_text("int dep(void);\nint main(void) { return dep(); }\n")
    _compile(tmp_path / "dep.c", tmp_path / "libdep.so", "-shared", "-fPIC")
    _compile(
        tmp_path / "main.c",
        tmp_path / "tool",
        f"-L{tmp_path}",
        "-ldep",
        "-Wl,-rpath,$ORIGIN/../lib/private",
        "-Wl,--enable-new-dtags",
    )
    entries = [
        Entry("usr", "dir", perm=0o755),
        Entry("usr/local", "dir", perm=0o755),
        Entry("usr/local/bin", "dir", perm=0o755),
        Entry("usr/local/bin/tool", "file", perm=0o755, data=(tmp_path / "tool").read_bytes()),
        Entry("usr/local/lib/private/libdep.so", "file", data=(tmp_path / "libdep.so").read_bytes()),
        Entry("usr/local/lib/private/libunused.so", "file", data=(tmp_path / "libdep.so").read_bytes()),
        Entry("entry.sh", "file", perm=0o755, data=b"#!/usr/local/bin/tool -x\nexit 0\n"),
    ]
    layers = write_layers(str(tmp_path), [entries])
    command = StartCommand(("./entry.sh",), PATH_ENV, working_dir="/")
    bootstrap, _, _ = build_layers(str(tmp_path), layers, BuildOptions(start_command=command))
    assert _listed(bootstrap) == ["/entry.sh", "/usr/local/bin/tool", "/usr/local/lib/private/libdep.so"]


@given(stack=layer_stacks(), data=st.data())
def test_a_guessed_list_changes_layout_not_content(stack: list[list[Entry]], data: st.DataObject) -> None:
    """Whatever the tree and command (one of its own paths, as a program and as a script),
    a build with a guessed list holds the same tree as the reference: only the blob order
    differs, and the guess never fails the build."""
    paths = sorted({"/" + entry.path for layer in stack for entry in layer} | {"/missing"})
    program = data.draw(st.sampled_from(paths))
    argument = data.draw(st.sampled_from(paths))
    command = StartCommand((program, argument), PATH_ENV, working_dir=data.draw(st.sampled_from(paths)))
    expected = snapshot_tree(apply_layers(stack))
    with tempfile.TemporaryDirectory() as directory:
        layers = write_layers(directory, stack)
        options = BuildOptions(chunk_size=0x1000, start_command=command)
        bootstrap, blob_dir, _ = build_layers(directory, layers, options)
        as_directory, as_tar = unpacked(directory, bootstrap, blob_dir)
    assert diff(expected, as_directory) == []
    assert diff(expected, as_tar) == []


def test_start_command_from_image_config() -> None:
    config = {
        "config": {
            "Entrypoint": ["/entry"],
            "Cmd": ["--serve", 3],
            "Env": ["PATH=/x:/y", "EMPTY=", "BROKEN"],
            "WorkingDir": "",
        }
    }
    command = StartCommand.from_image_config(config)
    assert command == StartCommand(("/entry", "--serve"), {"PATH": "/x:/y", "EMPTY": ""}, "/")
    assert StartCommand.from_image_config({"config": {"Env": ["A=b"]}}) is None
    assert StartCommand.from_image_config({"config": "nonsense"}) is None
    assert StartCommand.from_image_config({}) is None


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc (scripts/install.sh installs it)")
def test_elf_reader_finds_tables_segments_and_refuses_what_is_not_elf(tmp_path: Path) -> None:
    (tmp_path / "main.c").write_text("#include <math.h>\nint main(int c, char **v) { return (int)sqrt(c); }\n")
    _compile(tmp_path / "main.c", tmp_path / "tool", "-lm", "-Wl,-rpath,/opt/lib")
    data = (tmp_path / "tool").read_bytes()

    def read(offset: int, size: int) -> bytes:
        return data[offset : offset + size]

    info = parse_dynamic(read, len(data))
    assert info is not None
    assert info.interpreter and info.interpreter.startswith("/lib")
    assert "libm.so.6" in info.needed and "libc.so.6" in info.needed
    assert "/opt/lib" in info.rpath + info.runpath
    first = info.segments[0]
    assert 0 < info.tables_end <= first.file_offset + first.file_size
    loads = info.load_ranges()
    assert loads[0] == (0, info.tables_end)
    assert loads[1:] == [(s.file_offset, s.file_offset + s.file_size) for s in info.segments if s.writable]
    assert info.code_ranges() and all(
        any(s.executable and (s.file_offset, s.file_offset + s.file_size) == code for s in info.segments)
        for code in info.code_ranges()
    )
    for broken in (data[:40], data[:200], b"\x7fELF" + bytes(60), b"#!/bin/sh\n", bytes(100)):
        data = broken
        assert parse_dynamic(read, len(broken)) is None


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc (scripts/install.sh installs it)")
def test_a_large_program_is_listed_whole_a_large_extension_by_its_parts(tmp_path: Path) -> None:
    """The program runs from its first instruction: whole. A large extension module is loaded
    later: its loader parts where it is imported, its code after everything else, its 3 MB of
    read-only data not at all."""
    big_table = "static const unsigned char table[3 << 20] = {1, 2, 3};\n"
    (tmp_path / "python.c").write_text(big_table + "int main(void) { return table[7]; }\n")
    (tmp_path / "ext.c").write_text(big_table + "int ext(int i) { return table[i]; }\n")
    _compile(tmp_path / "python.c", tmp_path / "python3.11")
    _compile(tmp_path / "ext.c", tmp_path / "ext.so", "-shared", "-fPIC")
    extension = f"{SITE}/fast.cpython-311-x86_64-linux-gnu.so"
    image = [entry for entry in _python_image(tmp_path) if entry.path not in ("usr/bin/python3.11", f"{SITE}/slow.py")]
    image += [
        Entry("usr/bin/python3.11", "file", perm=0o755, data=(tmp_path / "python3.11").read_bytes()),
        Entry(extension, "file", data=(tmp_path / "ext.so").read_bytes()),
    ]
    layers = write_layers(str(tmp_path), [image])
    command = StartCommand(("python3", "/app/main.py"), PATH_ENV)
    options = BuildOptions(chunk_size=0x1000, start_command=command)
    bootstrap = open_bootstrap(build_layers(str(tmp_path), layers, options)[0])
    table = bootstrap.prefetch_chunks()  # (inode, chunk index) in list order
    program, module = bootstrap.resolve(b"/usr/bin/python3.11"), bootstrap.resolve(f"/{extension}".encode())
    lazy = bootstrap.resolve(f"/{SITE}/lazy.py".encode())
    assert program is not None and module is not None and lazy is not None
    assert sorted(index for ino, index in table if ino == program) == list(range(len(list(bootstrap.chunks(program)))))
    module_positions = [position for position, (ino, _) in enumerate(table) if ino == module]
    assert 0 < len(module_positions) < len(list(bootstrap.chunks(module))) // 4  # not its 3 MB table
    lazy_position = next(position for position, (ino, _) in enumerate(table) if ino == lazy)
    assert module_positions[0] < lazy_position < module_positions[-1]  # head where imported, code last
    assert all(ino == module for ino, _ in table[module_positions[-1] :])


def _tree(files: dict[str, bytes]) -> TreeFiles:
    """An in-memory tree of regular files (directories made as needed)."""
    root = new_directory()
    contents: dict[int, bytes] = {}
    for path, data in files.items():
        *parents, name = path.strip("/").split("/")
        directory = root
        for part in parents:
            directory = directory.children.setdefault(part.encode(), new_directory())
        node = FsNode(mode=stat.S_IFREG | 0o755, size=len(data))
        directory.children[name.encode()] = node
        contents[id(node)] = data
    return TreeFiles(root, lambda node, offset, size: contents[id(node)][offset : offset + size])


def test_limits_bound_the_files_looked_at_and_the_source_parsed() -> None:
    files = {
        "/usr/bin/python3.11": b"interpreter",
        "/usr/lib/python3.11/os.py": b"",
        "/app/main.py": b"import first\nimport second\n",
        "/app/first.py": b"import third\n",
        "/app/second.py": b"",
        "/app/third.py": b"",
    }
    command = StartCommand(("/usr/bin/python3.11", "/app/main.py"), PATH_ENV)
    everything = [entry.path for entry in guess_start_files(_tree(files), command)]
    assert everything == [
        b"/usr/bin/python3.11",
        b"/app/main.py",
        b"/app/first.py",
        b"/app/third.py",
        b"/app/second.py",
    ]
    three_files = guess_start_files(_tree(files), command, Limits(max_files=3))
    assert [entry.path for entry in three_files] == everything[:3]
    # the script is parsed (27 bytes), `first` (13 bytes) would pass the bound
    no_more_source = guess_start_files(_tree(files), command, Limits(max_parsed_source_bytes=30))
    assert [entry.path for entry in no_more_source] == [everything[0], everything[1], everything[2], everything[4]]


def test_a_virtual_environment_on_the_path_adds_its_site_packages(tmp_path: Path) -> None:
    """`python3` found as /opt/venv/bin/python3, a link to the base interpreter: the modules
    the script imports from the environment's site-packages are listed."""
    venv_site = "opt/venv/lib/python3.11/site-packages"
    image = [
        *_python_image(tmp_path),
        Entry("opt/venv/bin/python3", "symlink", target="/usr/bin/python3.11"),
        _file("opt/venv/pyvenv.cfg", "home = /usr/bin\n"),
        _file(f"{venv_site}/vendored.py", "import json\n"),
        _file("app/serve.py", "import vendored\n"),
    ]
    layers = write_layers(str(tmp_path), [image])
    command = StartCommand(("python3", "/app/serve.py"), {"PATH": "/opt/venv/bin:/usr/bin:/bin"})
    bootstrap, _, _ = build_layers(str(tmp_path), layers, BuildOptions(start_command=command))
    listed = _listed(bootstrap)
    assert f"/{venv_site}/vendored.py" in listed and f"/{STDLIB}/json/decoder.py" in listed
