"""What a build reports: `--output-json` figures and the progress line on a terminal."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest

from builder import build as build_module
from builder.build import BuildOptions
from builder.unpack import unpack_to_tar
from rafs.mapped import open_bootstrap
from tests.builder.common import build_layers, write_layers
from tests.reference import Entry, whiteout

CHUNK = 0x1000


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal, keeping what was written to it."""

    def isatty(self) -> bool:
        return True


def test_files_count_real_files_not_whiteouts(tmp_path: Path) -> None:
    lower = [Entry("", "dir"), Entry("a", "file", data=b"a" * 10), Entry("b", "file", data=b"b" * 10)]
    upper = [whiteout("a"), Entry("c", "file", data=b"c" * 10), Entry("c-link", "hardlink", target="c")]
    paths = write_layers(str(tmp_path), [lower, upper])
    _, _, result = build_layers(str(tmp_path), paths, BuildOptions(chunk_size=CHUNK))
    assert result.files == 4  # a, b, c and c-link; the whiteout is not a file
    assert result.layers == 2
    assert result.bytes_in == 30
    assert set(result.seconds) == {"read_and_chunk", "overlay", "blobs", "bootstrap"}


def test_progress_moves_while_one_large_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chunks = 32
    layer = [Entry("", "dir"), Entry("big", "file", data=os.urandom(chunks * CHUNK))]
    paths = write_layers(str(tmp_path), [layer], ["none"])
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    monkeypatch.setattr(build_module, "PROGRESS_INTERVAL_S", 0.0)
    build_layers(str(tmp_path), paths, BuildOptions(chunk_size=CHUNK, progress=True))
    lines = [line for line in terminal.getvalue().split("\r\x1b[K") if line]
    big_lines = [line for line in lines if "big" in line]
    assert len(big_lines) >= chunks, lines
    assert big_lines[-1].endswith("big 128.0 KiB / 128.0 KiB"), big_lines[-1]
    assert terminal.getvalue().endswith("\r\x1b[K")  # the line is cleared at the end


def test_no_progress_when_stderr_is_not_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layer = [Entry("", "dir"), Entry("big", "file", data=os.urandom(8 * CHUNK))]
    paths = write_layers(str(tmp_path), [layer], ["none"])
    pipe = io.StringIO()
    monkeypatch.setattr("sys.stderr", pipe)
    monkeypatch.setattr(build_module, "PROGRESS_INTERVAL_S", 0.0)
    build_layers(str(tmp_path), paths, BuildOptions(chunk_size=CHUNK, progress=True))
    assert pipe.getvalue() == ""


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_get_the_mode_of_plainly_created_files(tmp_path: Path, umask: int) -> None:
    """Not mkstemp's 0600: a web server or a daemon of another user must be able to read blobs."""
    paths = write_layers(str(tmp_path), [[Entry("", "dir"), Entry("f", "file", data=b"x" * 5000)]])
    previous = os.umask(umask)
    try:
        bootstrap, blob_dir, result = build_layers(str(tmp_path), paths, BuildOptions(chunk_size=CHUNK))
        unpack_to_tar(open_bootstrap(bootstrap), blob_dir, str(tmp_path / "tree.tar"))
    finally:
        os.umask(previous)
    expected = 0o666 & ~umask
    outputs = [bootstrap, str(tmp_path / "tree.tar")] + [os.path.join(blob_dir, blob) for blob in result.blobs]
    assert {output: stat.S_IMODE(os.stat(output).st_mode) for output in outputs} == dict.fromkeys(outputs, expected)
