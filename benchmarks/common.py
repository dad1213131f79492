"""Helpers shared by the benchmark scripts: timing, result files, Markdown tables."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def machine() -> dict[str, object]:
    """What the figures were measured on (they are only comparable within one run)."""
    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def timed(run: Callable[[], object], repeat: int = 3) -> float:
    """Median wall seconds of `repeat` calls."""
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def run_command(argv: Sequence[str]) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)


def write_results(name: str, data: dict[str, object], table: str) -> str:
    """Write `<name>.json` and `<name>.md` under benchmarks/results; returns the JSON path."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    data = {"benchmark": name, "machine": machine(), **data}
    json_path = os.path.join(RESULTS_DIR, f"{name}.json")
    with open(json_path, "w") as file:
        json.dump(data, file, indent=2)
    with open(os.path.join(RESULTS_DIR, f"{name}.md"), "w") as file:
        file.write(table + "\n")
    return json_path


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def tree_size(path: str) -> tuple[int, int]:
    """(files, bytes) of regular files under `path`, not following symlinks."""
    files = total = 0
    for directory, _, names in os.walk(path):
        for name in names:
            full = os.path.join(directory, name)
            if os.path.isfile(full) and not os.path.islink(full):
                files += 1
                total += os.path.getsize(full)
    return files, total
