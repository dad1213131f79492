"""`benchmarks.cluster`'s report from fake runs: the table's growth column and the chart file."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.cluster import MiB, chart, main, table


def run(mode: str, hosts: int, origin_mib: float) -> dict[str, object]:
    return {
        "mode": mode, "hosts": hosts, "last_exit_s": 1.0 + hosts, "mean_exit_s": 1.0, "origin_bytes_during": 0,
        "origin_bytes_total": int(origin_mib * MiB), "host_fetched_bytes": [17 * MiB] * hosts,
        "failed_requests": 0, "daemon_cpu_s": 0.7 * hosts, "service_cpu_s": 0.1,
    }  # fmt: skip


def test_table_says_how_origin_bytes_grow_with_hosts(tmp_path: Path) -> None:
    runs = [run("direct", 1, 17), run("direct", 8, 136), run("proxy", 1, 32), run("proxy", 8, 32)]
    runs += [run("mirror-warm", 1, 0), run("mirror-warm", 8, 0)]
    lines = table(runs).splitlines()
    assert "| direct | 8 | 9.00 |" in lines[3] and "| 8.00x |" in lines[3]
    assert "| 1.00x |" in lines[5]
    assert "| - |" in lines[7], "no ratio of nothing"
    chart(runs, str(tmp_path / "cluster.png"))
    assert (tmp_path / "cluster.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "flags", [["--hosts", "1,1"], ["--hosts", "2,x"], ["--hosts", "0"], ["--modes", "direct,nope"]]
)
def test_bad_host_counts_and_modes_are_one_usage_line(flags: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(flags)
    assert stopped.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after argparse's usage line
    assert f"error: argument {flags[0]}: " in last and repr(flags[1]) in last
