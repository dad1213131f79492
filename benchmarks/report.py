"""Tables and charts of the cold-start benchmark's results, and the results file's schema.

`python3 -m benchmarks.report [benchmarks/results/coldstart.json]` renders the Markdown and the
charts again from a results file; `benchmarks.coldstart` calls `write_report` itself. Ratios are
of medians, against the OCI baseline and the local-disk floor of the same image and link,
measured in the same run. Writes `<name>.md`, `<name>.png` (seconds and bytes per mode) and
`<name>-timeline.png` (one panel per mode: the median run's bytes fetched over time, the time
FUSE reads spent blocked on misses, the requests in flight).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypedDict, cast

from benchmarks.common import RESULTS_DIR, machine, markdown_table

if TYPE_CHECKING:
    from matplotlib.axes import Axes

BASELINE = "oci"
FLOOR = "local-disk"
TRACE_MODE = "lazy-prefetch"
MODE_LABELS = {
    "oci": "OCI pull + unpack",
    "local-disk": "local disk",
    "lazy-cold": "lazy, cold",
    "lazy-bare": "lazy, cold, no prefetch list",
    "lazy-prefetch": "lazy, cold + trace prefetch",
    "lazy-warm": "lazy, warm cache",
    "erofs-cold": "EROFS driver, cold",
    "erofs-prefetch": "EROFS driver, cold + trace prefetch",
    "erofs-warm": "EROFS driver, warm cache",
}
MODE_COLOURS = {
    "oci": "tab:gray",
    "local-disk": "tab:brown",
    "lazy-cold": "tab:blue",
    "lazy-bare": "tab:red",
    "lazy-prefetch": "tab:green",
    "lazy-warm": "tab:purple",
    "erofs-cold": "tab:cyan",
    "erofs-prefetch": "tab:olive",
    "erofs-warm": "tab:pink",
}
MiB = 1 << 20


class DaemonRecord(TypedDict):
    """What `nydusd --timeline-out` said about one start; moments in seconds from the run's start."""

    started_s: float  # the daemon process began (its own account, to the kernel's 10 ms tick)
    mounted_s: float
    first_read_s: float | None
    fuse_reads: int
    fuse_read_bytes: int  # what the workload read through the mount
    requests: int
    failed_requests: int
    requests_by_priority: dict[str, int]
    bytes_by_priority: dict[str, int]
    max_in_flight: int
    blocked_s: float  # time at least one FUSE read waited for fetched data
    blocked_read_s: float  # the waits summed over reads (overlapping waits add up)
    blocked_spans: list[list[float]]  # [start, end] of the union of the waits
    cpu_s: float | None  # the daemon's user + system CPU time (None: a nydusd that does not say)


class RunRecord(TypedDict):
    seconds: float  # from nothing on the host to the workload's exit
    events: dict[str, float]  # seconds from the start: "mounted"/"unpacked", "first read", "exit", ...
    bytes_down: int  # registry -> host, through the shaper (HTTP headers included)
    bytes_up: int
    requests: int  # HTTP requests through the shaper
    max_in_flight: int  # the most requests in flight at once, seen by the shaper
    down_series: list[list[float]]  # [seconds from the start, bytes down since the start], every 50 ms
    in_flight_series: list[list[float]]  # [seconds from the start, most in flight in the 50 ms before]
    daemon: DaemonRecord | None  # None: not a lazy mode


class CaseRecord(TypedDict):
    mode: str
    available: bool
    reason: str  # why not, when not available
    runs: list[RunRecord]
    median_s: float | None
    median_bytes_down: int | None


class LinkRecord(TypedDict):
    rtt_ms: float
    rate_mbit: float
    cases: list[CaseRecord]


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
    read_bytes: int | None  # what the start reads through the filesystem (median FUSE read bytes, lazy-cold)
    links: list[LinkRecord]


class Results(TypedDict):
    settings: dict[str, object]
    images: list[ImageRecord]


def case_of(link: LinkRecord, mode: str) -> CaseRecord | None:
    return next((case for case in link["cases"] if case["mode"] == mode and case["available"]), None)


def median_run(case: CaseRecord) -> RunRecord:
    """The run whose time is the median (the upper one of an even count), for its phases and timeline."""
    ordered = sorted(case["runs"], key=lambda run: run["seconds"])
    return ordered[len(ordered) // 2]


def _median_of(case: CaseRecord | None, value: Callable[[RunRecord], float]) -> float | None:
    """The median over the case's runs of `value`, or None when the case did not run."""
    if case is None or not case["runs"]:
        return None
    return float(statistics.median(value(run) for run in case["runs"]))


def _seconds_of(run: RunRecord) -> float:
    return run["seconds"]


def _bytes_of(run: RunRecord) -> float:
    return run["bytes_down"]


def _ratio(value: float | None, baseline: float | None) -> str:
    if value is None or not baseline:
        return "-"
    return f"{value / baseline:.2f}x"


def _mib(count: float | None) -> str:
    return "-" if count is None else f"{count / MiB:.1f}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def link_label(link: LinkRecord) -> str:
    return f"{link['rtt_ms']:g} ms RTT, {link['rate_mbit']:g} Mbit/s"


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
                "-" if image["trace_files"] is None else image["trace_files"],
                _mib(image["read_bytes"]),
            ]
        )
    header = [
        "image", "contents", "workload", "layers", "entries", "unpacked MiB", "OCI layers MiB (gzip)",
        "nydus blobs MiB", "bootstrap layer KiB", "convert s", "files in trace", "read by the start MiB",
    ]  # fmt: skip
    return markdown_table(header, rows)


def cases_table(image: ImageRecord, link: LinkRecord) -> str:
    """One row per mode: median seconds, ratios to OCI and to the local disk, bytes and requests."""
    base_s = _median_of(case_of(link, BASELINE), _seconds_of)
    floor_s = _median_of(case_of(link, FLOOR), _seconds_of)
    trace_bytes = _median_of(case_of(link, TRACE_MODE), _bytes_of)
    rows: list[list[object]] = []
    for case in link["cases"]:
        label = MODE_LABELS.get(case["mode"], case["mode"])
        if not case["available"]:
            rows.append([label, f"not available: {case['reason']}", "", "", "", "", "", ""])
            continue
        fetched = _median_of(case, _bytes_of)
        rows.append(
            [
                label,
                _seconds(case["median_s"]),
                _ratio(base_s, case["median_s"]),
                _ratio(case["median_s"], floor_s),
                _mib(fetched),
                _ratio(fetched, trace_bytes) if case["mode"] not in (BASELINE, FLOOR) else "-",
                f"{_median_of(case, lambda run: run['requests']):.0f}",
                f"{_median_of(case, lambda run: run['max_in_flight']):.0f}",
            ]
        )
    header = [
        "mode", "start to exit, s", "speed-up: OCI / this", "this / local disk", "fetched MiB",
        "fetched / trace mode's", "HTTP requests", "max in flight",
    ]  # fmt: skip
    return markdown_table(header, rows)


def phases_table(image: ImageRecord, link: LinkRecord) -> str:
    """The median run of each mode, phase by phase (seconds), and what nydusd said about it."""
    rows: list[list[object]] = []
    for case in link["cases"]:
        if not case["available"] or not case["runs"]:
            continue
        run = median_run(case)
        events = run["events"]
        ready = events.get("mounted", events.get("unpacked", 0.0))
        first_read = events.get("first read")
        daemon = run["daemon"]
        by_priority = daemon["requests_by_priority"] if daemon else {}
        rows.append(
            [
                MODE_LABELS.get(case["mode"], case["mode"]),
                _seconds(ready),
                "-" if first_read is None else _seconds(first_read - ready),
                _seconds(run["seconds"] - (ready if first_read is None else first_read)),
                _seconds(run["seconds"]),
                "-" if daemon is None else f"{daemon['blocked_s']:.2f} ({daemon['blocked_read_s']:.1f})",
                "-" if daemon is None else _mib(daemon["fuse_read_bytes"]),
                "-"
                if daemon is None
                else "/".join(str(by_priority.get(p, 0)) for p in ("demand", "readahead", "prefetch")),
                "-" if daemon is None else daemon["max_in_flight"],
                "-" if daemon is None or daemon.get("cpu_s") is None else f"{daemon.get('cpu_s'):.2f}",
            ]
        )
    header = [
        "mode", "mounted / unpacked", "then first read", "then exit", "total",
        "blocked in misses s (summed over reads)", "FUSE read MiB", "daemon requests demand/readahead/prefetch",
        "daemon max in flight", "daemon CPU s",
    ]  # fmt: skip
    return markdown_table(header, rows)


def markdown(results: Results) -> str:
    settings = results["settings"]
    lines = [
        f"Cold start, median of {settings.get('runs')} run(s), page cache dropped before every run "
        "(the tools' code read back in); ratios against OCI pull + unpack and against the local disk of the same image and link, same run. "
        "Phases are of the median run, in seconds from the start (nothing on the host).",
    ]
    for image in results["images"]:
        for link in image["links"]:
            lines += ["", f"### {image['name']}, {link_label(link)}", "", cases_table(image, link)]
            lines += ["", phases_table(image, link)]
    lines += ["", "### images", "", images_table(results)]
    if "wall_s" in settings:
        lines += ["", f"Whole run: {settings['wall_s']} s."]
    return "\n".join(lines)


# ---- charts


def _available_modes(results: Results) -> list[str]:
    return [
        mode
        for mode in MODE_LABELS
        if any(case_of(link, mode) for image in results["images"] for link in image["links"])
    ]


def chart(results: Results, path: str) -> None:
    """Grouped bars per image and link: median seconds per mode, and MiB fetched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [(image, link) for image in results["images"] for link in image["links"]]
    names = [f"{image['name']}\n{link['rate_mbit']:g} Mbit/s" for image, link in groups]
    modes = _available_modes(results)
    figure, (time_axes, bytes_axes) = plt.subplots(1, 2, figsize=(max(12, 3 * len(groups)), 4.8))
    width = 0.8 / max(len(modes), 1)
    for position, mode in enumerate(modes):
        seconds = [_median_of(case_of(link, mode), _seconds_of) or 0.0 for _, link in groups]
        fetched = [(_median_of(case_of(link, mode), _bytes_of) or 0.0) / MiB for _, link in groups]
        offsets = [index + (position - (len(modes) - 1) / 2) * width for index in range(len(groups))]
        colour = MODE_COLOURS.get(mode)
        time_axes.bar(offsets, seconds, width, label=MODE_LABELS[mode], color=colour)
        bytes_axes.bar(offsets, fetched, width, label=MODE_LABELS[mode], color=colour)
    for axes, title in ((time_axes, "start to workload exit, s"), (bytes_axes, "fetched from the registry, MiB")):
        axes.set_xticks(range(len(groups)), names)
        axes.set_title(title)
        axes.grid(axis="y", alpha=0.3)
    time_axes.legend(fontsize="small")
    rtts = sorted({link["rtt_ms"] for _, link in groups})
    figure.suptitle(
        f"Cold start, {'/'.join(f'{rtt:g}' for rtt in rtts)} ms RTT "
        f"(median of {results['settings'].get('runs')}; page cache dropped before every run)",
        fontsize="medium",
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _timeline_panel(axes: Axes, run: RunRecord, rate_mbit: float, x_limit: float) -> None:
    """Bytes fetched over time (left axis), blocked misses (shaded), requests in flight (right axis)."""
    daemon = run["daemon"]
    if daemon is not None:
        for start, end in daemon["blocked_spans"]:
            axes.axvspan(start, end, color="tab:red", alpha=0.25, linewidth=0)
    times = [0.0] + [point[0] for point in run["down_series"]]
    fetched = [0.0] + [point[1] / MiB for point in run["down_series"]]
    axes.plot(times, fetched, color="tab:blue", linewidth=1.4)
    wire_s = (run["bytes_down"] * 8 / (rate_mbit * 1e6)) if rate_mbit else 0.0
    axes.plot([0, wire_s], [0, run["bytes_down"] / MiB], color="tab:blue", linewidth=0.8, linestyle=":")
    for event, at in run["events"].items():
        if event in ("mounted", "unpacked", "first read"):
            axes.axvline(at, color="black", linewidth=0.7, linestyle="--")
            axes.text(at, 1.0, f" {event}", transform=axes.get_xaxis_transform(), fontsize=6, va="top", rotation=90)
    axes.axvline(run["seconds"], color="black", linewidth=1.2)
    axes.set_xlim(0, x_limit)
    axes.set_ylim(0, max(1.0, run["bytes_down"] / MiB * 1.08))
    axes.grid(alpha=0.3)
    axes.tick_params(labelsize=7)
    if run["in_flight_series"]:
        flight_axes = axes.twinx()
        flight_axes.step(
            [point[0] for point in run["in_flight_series"]],
            [point[1] for point in run["in_flight_series"]],
            color="tab:gray",
            linewidth=0.6,
            where="pre",  # a sample's peak is of the 50 ms before it
        )
        flight_axes.set_ylim(0, max(4.0, max(point[1] for point in run["in_flight_series"]) * 1.1))
        flight_axes.tick_params(labelsize=6, colors="tab:gray")


def timeline_chart(results: Results, path: str) -> None:
    """A row per image and link, a panel per mode (the median run), on one time axis per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    rows = [(image, link) for image in results["images"] for link in image["links"]]
    modes = _available_modes(results)
    if not rows or not modes:
        return
    figure, grid = plt.subplots(len(rows), len(modes), figsize=(3.3 * len(modes), 2.5 * len(rows) + 0.8), squeeze=False)
    for row, (image, link) in enumerate(rows):
        runs = {mode: median_run(case) for mode in modes if (case := case_of(link, mode)) and case["runs"]}
        x_limit = max((run["seconds"] for run in runs.values()), default=1.0) * 1.05
        for column, mode in enumerate(modes):
            axes = grid[row][column]
            run = runs.get(mode)
            if run is None:
                axes.set_axis_off()
                continue
            _timeline_panel(axes, run, link["rate_mbit"], x_limit)
            daemon = run["daemon"]
            blocked = f", blocked {daemon['blocked_s']:.1f} s" if daemon else ""
            axes.set_title(
                f"{MODE_LABELS[mode]}: {run['seconds']:.1f} s, {run['bytes_down'] / MiB:.0f} MiB{blocked}",
                fontsize=7.5,
            )
            if column == 0:
                axes.set_ylabel(f"{image['name']}\n{link['rate_mbit']:g} Mbit/s\nMiB fetched", fontsize=8)
    legend = [
        Line2D([], [], color="tab:blue", label="MiB fetched (shaper, every 50 ms)"),
        Line2D([], [], color="tab:blue", linestyle=":", label="the same bytes at the link's rate from 0 s"),
        Patch(color="tab:red", alpha=0.25, label="a FUSE read blocked on a miss (nydusd)"),
        Line2D([], [], color="tab:gray", label="requests in flight (shaper, right axis)"),
        Line2D([], [], color="black", linestyle="--", label="mounted / unpacked, first read"),
        Line2D([], [], color="black", linewidth=1.2, label="workload exit"),
    ]
    figure.legend(handles=legend, loc="lower center", ncol=len(legend), fontsize=7, frameon=False)
    figure.suptitle("Where the seconds go: the median run of each mode (x: seconds from the start)", fontsize=9)
    figure.tight_layout(rect=(0, 0.04, 1, 0.97))
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_report(results: Results, output_dir: str = RESULTS_DIR, name: str = "coldstart") -> list[str]:
    """`<name>.json`, `<name>.md`, `<name>.png` and `<name>-timeline.png` in `output_dir`; their paths."""
    os.makedirs(output_dir, exist_ok=True)
    json_path = os.path.join(output_dir, f"{name}.json")
    with open(json_path, "w") as file:
        json.dump({"benchmark": name, "machine": machine(), **results}, file, indent=1)
    return [json_path, *render(results, output_dir, name)]


def render(results: Results, output_dir: str, name: str) -> Sequence[str]:
    """The Markdown and the two charts of `results`; their paths."""
    md_path, png_path, timeline_path = (
        os.path.join(output_dir, f"{name}{suffix}") for suffix in (".md", ".png", "-timeline.png")
    )
    with open(md_path, "w") as file:
        file.write(markdown(results) + "\n")
    chart(results, png_path)
    timeline_chart(results, timeline_path)
    return [md_path, png_path, timeline_path]


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
    paths = render(results, output_dir, name)
    print(markdown(results))
    print("wrote " + ", ".join(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
