"""The import directions import-linter cannot state (see the contracts in pyproject.toml):
`daemon.storage` knows nothing of the daemon above it, and `builder` enters `daemon` through the
registry package's public surface only."""

from __future__ import annotations

import grimp

GRAPH = grimp.build_graph("daemon", "builder", "rafs", "native")


def daemon_imports_of(package: str) -> set[tuple[str, str]]:
    """(importer, imported) for every import from a module of `package` into `daemon`."""
    found = set()
    for importer in GRAPH.find_descendants(package) | {package}:
        for imported in GRAPH.find_modules_directly_imported_by(importer):
            if imported == "daemon" or imported.startswith("daemon."):
                found.add((importer, imported))
    return found


def test_daemon_storage_imports_nothing_of_the_daemon_above_it() -> None:
    outside = {
        (importer, imported)
        for importer, imported in daemon_imports_of("daemon.storage")
        if not imported.startswith("daemon.storage")
    }
    assert outside == set()


def test_builder_uses_the_registry_package_only() -> None:
    assert {imported for _, imported in daemon_imports_of("builder")} == {"daemon.storage.registry"}


def test_the_graph_is_the_projects() -> None:
    """Guards the two tests above against an empty graph (they would pass on one)."""
    assert "daemon.storage.registry.client" in GRAPH.find_descendants("daemon")
    assert ("builder.nydusify", "daemon.storage.registry") in daemon_imports_of("builder")
