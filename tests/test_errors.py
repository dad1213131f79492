"""The error tree: every class the project raises on purpose, walked from the modules themselves.

Checks that each branch has an exit code of its own, that no leaf sets one, that no two classes
share a name, and that `docs/errors.md` is the table generated here
(`python -m tests.test_errors` rewrites it).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
from pathlib import Path

import rafs.errors
from rafs.errors import BRANCHES, NydusError

PACKAGES = ("rafs", "native", "builder", "daemon")
DOC = Path(__file__).resolve().parents[1] / "docs" / "errors.md"


def project_errors() -> list[type[NydusError]]:
    """Every `NydusError` subclass defined in the project's packages, in a stable order."""
    found: dict[str, type[NydusError]] = {}
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        modules = [package_name] + [
            info.name for info in pkgutil.walk_packages(package.__path__, f"{package_name}.") if "._" not in info.name
        ]
        for module_name in modules:
            module = importlib.import_module(module_name)
            for _, value in inspect.getmembers(module, inspect.isclass):
                if issubclass(value, NydusError) and value.__module__ == module_name:
                    found[f"{value.__module__}.{value.__qualname__}"] = value
    return [found[key] for key in sorted(found)]


def branch_of(error: type[NydusError]) -> type[NydusError]:
    """The nearest branch root above `error` (or the root itself)."""
    for ancestor in error.__mro__:
        if ancestor in BRANCHES and ancestor is not NydusError:
            return ancestor
    return NydusError


def render() -> str:
    lines = [
        "# Errors and exit codes",
        "",
        "Generated from `rafs/errors.py` and the modules that raise them by `tests/test_errors.py`",
        "(`python -m tests.test_errors` rewrites this file; a test fails when it is stale).",
        "",
        "The command lines (`nydus-image`, `nydusify`, `nydusd`, `nydusctl`) print one line,",
        "`context: message`, and exit with the code of the error's branch. Usage errors exit 2.",
        "",
        "| exit | branch | what it means |",
        "|---:|---|---|",
    ]
    for branch in BRANCHES:
        lines.append(f"| {branch.exit_code} | `{branch.__name__}` | {_summary(branch)} |")
    lines += ["", "## Every class, by branch", ""]
    errors = project_errors()
    for branch in BRANCHES:
        members = [error for error in errors if branch_of(error) is branch and error is not branch]
        if not members:
            continue
        lines += [f"### `{branch.__name__}` (exit {branch.exit_code})", ""]
        for error in sorted(members, key=lambda item: item.__name__):
            lines.append(f"- `{error.__module__}.{error.__name__}`: {_summary(error)}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _summary(error: type[NydusError]) -> str:
    return (inspect.getdoc(error) or "").split("\n\n")[0].replace("\n", " ")


def test_each_branch_has_its_own_exit_code() -> None:
    codes = [branch.exit_code for branch in BRANCHES]
    assert len(set(codes)) == len(codes), codes
    assert all(branch.__module__ == rafs.errors.__name__ for branch in BRANCHES)


def test_only_branches_set_an_exit_code() -> None:
    for error in project_errors():
        if error not in BRANCHES:
            assert "exit_code" not in vars(error), f"{error.__qualname__} sets its own exit code"
            assert error.exit_code == branch_of(error).exit_code, error


def test_no_two_classes_share_a_name() -> None:
    names = [error.__name__ for error in project_errors()]
    assert sorted(names) == sorted(set(names)), sorted(name for name in names if names.count(name) > 1)


def test_every_leaf_has_a_docstring_and_a_branch() -> None:
    for error in project_errors():
        assert error.__doc__, error
        assert error is NydusError or issubclass(error, BRANCHES[1:]) or error in BRANCHES, error


def test_one_context_format() -> None:
    from rafs.errors import BuildError, ChunkDigestMismatch

    assert str(ChunkDigestMismatch("digest differs", blob_id="ab" * 32, chunk_index=3)) == (
        f"blob {'ab' * 8}, chunk 3: digest differs"
    )
    assert str(BuildError("bad", layer="l1", entry="etc/x")) == "layer l1, entry 'etc/x': bad"
    error = ChunkDigestMismatch("digest differs", chunk_index=0).at_path("/bin/sh")
    assert type(error) is ChunkDigestMismatch and str(error) == "path /bin/sh, chunk 0: digest differs"


def test_docs_errors_md_is_generated_from_the_tree() -> None:
    assert DOC.read_text() == render(), "docs/errors.md is stale: run python -m tests.test_errors"


if __name__ == "__main__":
    DOC.write_text(render())
    sys.exit(0)
