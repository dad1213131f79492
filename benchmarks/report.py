"""Tables and charts of the cold-start benchmark's results.

`python3 -m benchmarks.report [benchmarks/results/coldstart.json]` renders the Markdown table
and the PNG chart again from a results file; `benchmarks.coldstart` calls `write_report` itself.
Ratios are of medians, against the OCI baseline of the same image measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from typing import TypedDict, cast

from benchmarks.common import RESULTS_DIR, machine, markdown_table

BASELINE = "oci"
MODE_LABELS = {
    "oci": "OCI pull + unpack",
    "lazy-cold": "lazy, cold",
    "lazy-prefetch": "lazy, cold + trace prefetch",
    "lazy-warm": "lazy, warm cache",
}
MiB = 1 << 20


class RunRecord(TypedDict):
    seconds: float
    phases: dict[str, float]
    bytes_down: int  # registry -> host, through the shaper (HTTP headers included)
    bytes_up: int


class CaseRecord(TypedDict):
    mode: str
    available: bool
    reason: str  # why not, when not available
    runs: list[RunRecord]
    median_s: float | None
    median_bytes_down: int | None


class ImageRecord(TypedDict):
    name: str
    description: str
    workload: list[str]
    layers: int
    files: int
    oci_bytes: int  # compressed layers, what an OCI pull must fetch
    unpacked_bytes: int
    nydus_blob_bytes: int | None
    bootstrap_bytes: int | None  # the bootstrap layer (tar.gz) as pushed
    convert_s: float | None
    trace_files: int | None  # files in the access trace used as the prefetch list
    cases: list[CaseRecord]


class Results(TypedDict):
    settings: dict[str, object]
    images: list[ImageRecord]


def _case(image: ImageRecord, mode: str) -> CaseRecord | None:
    return next((case for case in image["cases"] if case["mode"] == mode), None)


def median_run(case: CaseRecord) -> RunRecord:
    """The run whose time is the median (the upper one of an even count), for its phases."""
    ordered = sorted(case["runs"], key=lambda run: run["seconds"])
    return ordered[len(ordered) // 2]


def _ratio(value: float | None, baseline: float | None) -> str:
    if value is None or not baseline:
        return "-"
    return f"{value / baseline:.2f}x"


def _mib(count: float | None) -> str:
    return "-" if count is None else f"{count / MiB:.2f}"


def images_table(results: Results) -> str:
    rows = []
    for image in results["images"]:
        rows.append(
            [
                image["name"],
                image["description"],
                f"`{shlex.join(image['workload'])}`",
                image["layers"],
                image["files"],
                _mib(image["unpacked_bytes"]),
                _mib(image["oci_bytes"]),
                _mib(image["nydus_blob_bytes"]),
                "-" if image["bootstrap_bytes"] is None else f"{image['bootstrap_bytes'] / 1024:.0f}",
                "-" if image["convert_s"] is None else f"{image['convert_s']:.1f}",
                "-" if image.get("trace_files") is None else image["trace_files"],
            ]
        )
    header = [
        "image", "contents", "workload", "layers", "entries", "unpacked MiB", "OCI layers MiB (gzip)",
        "nydus blobs MiB", "bootstrap layer KiB", "convert s", "files in trace",
    ]  # fmt: skip
    return markdown_table(header, rows)


def cases_table(results: Results) -> str:
    rows: list[list[object]] = []
    for image in results["images"]:
        baseline = _case(image, BASELINE)
        base_s = baseline["median_s"] if baseline else None
        base_bytes = baseline["median_bytes_down"] if baseline else None
        for case in image["cases"]:
            label = MODE_LABELS.get(case["mode"], case["mode"])
            if not case["available"]:
                rows.append([image["name"], label, f"not available: {case['reason']}", "", "", "", ""])
                continue
            phases = median_run(case)["phases"] if case["runs"] else {}
            rows.append(
                [
                    image["name"],
                    label,
                    "-" if case["median_s"] is None else f"{case['median_s']:.2f}",
                    _ratio(case["median_s"], base_s),
                    _mib(case["median_bytes_down"]),
                    _ratio(case["median_bytes_down"], base_bytes),
                    ", ".join(f"{name} {seconds:.2f}" for name, seconds in phases.items()),
                ]
            )
    header = [
        "image",
        "mode",
        "start to exit, s (median)",
        "vs OCI",
        "fetched MiB",
        "vs OCI",
        "phases of the median run, s",
    ]
    return markdown_table(header, rows)


def markdown(results: Results) -> str:
    settings = results["settings"]
    lines = [
        f"Cold start, {settings.get('rtt_ms')} ms RTT, {settings.get('rate_mbit')} Mbit/s, "
        f"median of {settings.get('runs')} run(s); ratios against OCI pull + unpack of the same image, same run.",
        "",
        cases_table(results),
        "",
        images_table(results),
    ]
    return "\n".join(lines)


def chart(results: Results, path: str) -> None:
    """Grouped bars: median seconds per image per available mode, and MiB fetched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = [image["name"] for image in results["images"]]
    modes = [
        mode
        for mode in MODE_LABELS
        if any((case := _case(image, mode)) is not None and case["available"] for image in results["images"])
    ]
    figure, (time_axes, bytes_axes) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(len(modes), 1)
    for position, mode in enumerate(modes):
        seconds: list[float] = []
        fetched: list[float] = []
        for image in results["images"]:
            case = _case(image, mode)
            usable = case is not None and case["available"]
            seconds.append((case["median_s"] or 0.0) if case and usable else 0.0)
            fetched.append((case["median_bytes_down"] or 0) / MiB if case and usable else 0.0)
        offsets = [index + (position - (len(modes) - 1) / 2) * width for index in range(len(images))]
        time_axes.bar(offsets, seconds, width, label=MODE_LABELS[mode])
        bytes_axes.bar(offsets, fetched, width, label=MODE_LABELS[mode])
    settings = results["settings"]
    for axes, title in ((time_axes, "start to workload exit, s"), (bytes_axes, "fetched from registry, MiB")):
        axes.set_xticks(range(len(images)), images)
        axes.set_title(title)
        axes.grid(axis="y", alpha=0.3)
    time_axes.legend(fontsize="small")
    unavailable = sorted({MODE_LABELS.get(m, m) for i in results["images"] for m in _unavailable_modes(i)})
    note = f"not available: {'; '.join(unavailable)}" if unavailable else ""
    figure.suptitle(
        f"Cold start over {settings.get('rtt_ms')} ms RTT, {settings.get('rate_mbit')} Mbit/s "
        f"(median of {settings.get('runs')})\n{note}",
        fontsize="medium",
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _unavailable_modes(image: ImageRecord) -> list[str]:
    return [case["mode"] for case in image["cases"] if not case["available"]]


def write_report(results: Results, output_dir: str = RESULTS_DIR, name: str = "coldstart") -> list[str]:
    """`<name>.json`, `<name>.md` and `<name>.png` in `output_dir`; returns their paths."""
    os.makedirs(output_dir, exist_ok=True)
    json_path, md_path, png_path = (os.path.join(output_dir, f"{name}.{ext}") for ext in ("json", "md", "png"))
    with open(json_path, "w") as file:
        json.dump({"benchmark": name, "machine": machine(), **results}, file, indent=2)
    with open(md_path, "w") as file:
        file.write(markdown(results) + "\n")
    chart(results, png_path)
    return [json_path, md_path, png_path]


def load(path: str) -> Results:
    with open(path) as file:
        return cast(Results, json.load(file))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="?", default=os.path.join(RESULTS_DIR, "coldstart.json"))
    arguments = parser.parse_args()
    results = load(arguments.results)
    output_dir = os.path.dirname(os.path.abspath(arguments.results))
    name = os.path.splitext(os.path.basename(arguments.results))[0]
    with open(os.path.join(output_dir, f"{name}.md"), "w") as file:
        file.write(markdown(results) + "\n")
    chart(results, os.path.join(output_dir, f"{name}.png"))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
