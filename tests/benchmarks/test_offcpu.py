"""`benchmarks.offcpu`: a workload's time, read from `perf sched timehist -g` lines.

The lines are written here in perf's format (time, [cpu], task[tid/pid], wait, sched delay and
run in ms, then the chain the task left the CPU through), so the reading is checked exactly;
a real recording needs root, perf and a whole harness run (see the module's docstring).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.offcpu import OffCpuError, main, read_recording, wait_kind, workloads

LOOKUP = "request_wait_answer <- __fuse_simple_request <- fuse_lookup_name <- fuse_lookup <- __lookup_slow"
FAULT = "io_schedule <- folio_wait_bit_common <- filemap_fault <- __do_fault <- do_fault"
READ = "io_schedule <- folio_wait_bit_common <- filemap_get_pages <- filemap_read <- vfs_read"
READDIR = "request_wait_answer <- __fuse_simple_request <- fuse_readdir_uncached <- iterate_dir"
FUTEX = "futex_wait_queue <- __futex_wait <- futex_wait <- do_futex"
PREEMPTED = "irqentry_exit_to_user_mode <- asm_sysvec_apic_timer_interrupt <- [unknown]"


def line(time: float, task: str, wait: float, delay: float, run: float, chain: str) -> str:
    return f"{time:15.6f} [0001]  {task:30s} {wait:9.3f}  {delay:9.3f}  {run:9.3f}    {chain}"


def test_wait_kinds_come_from_the_chain() -> None:
    assert wait_kind(LOOKUP) == "FUSE lookup"
    assert wait_kind(FAULT) == "page I/O of a fault"
    assert wait_kind(READ) == "page I/O of a read"
    assert wait_kind(READDIR) == "FUSE readdir"
    assert wait_kind(FUTEX) == "other"


def test_a_workload_is_what_runc_init_became_and_its_waits_go_to_the_chain_it_left_through() -> None:
    text = [
        "           time    cpu  task name                       wait time  sch delay   run time",
        line(10.000, "runc:[2:INIT][500]", 0.0, 0.0, 1.0, PREEMPTED),
        line(10.010, "runc:[1:CHILD][499]", 0.0, 0.0, 1.0, FUTEX),  # not a workload
        line(10.020, "python3[500]", 4.0, 1.0, 2.0, LOOKUP),  # ran after being preempted
        line(10.030, "python3[500]", 7.0, 0.5, 3.0, FAULT),  # slept 7 ms in the lookup
        line(10.040, "python3[501/500]", 0.0, 0.0, 5.0, FUTEX),  # a helper thread: CPU only
        line(10.050, "python3[500]", 6.0, 0.0, 1.0, READ),  # slept 6 ms in the fault
        line(10.060, "python3[501/500]", 90.0, 0.0, 1.0, FUTEX),  # its sleep is not the start's
        line(10.070, "python3[500]", 2.0, 0.0, 1.0, "do_exit"),  # slept 2 ms in the read
        line(10.080, "python3[600]", 1.0, 0.0, 1.0, FUTEX),  # another process: not a workload
    ]
    (workload,) = workloads(text)
    assert workload.pid == 500 and workload.command == "python3"
    assert workload.first_s == 10.0 and workload.last_s == 10.07
    assert workload.on_cpu_ms == 1.0 + 2.0 + 3.0 + 5.0 + 1.0 + 1.0 + 1.0
    assert workload.runnable_ms == 1.5
    assert workload.off_cpu_ms == {
        "other": 4.0,
        "FUSE lookup": 7.0,
        "page I/O of a fault": 6.0,
        "page I/O of a read": 2.0,
    }


def test_workloads_are_listed_in_the_order_they_started() -> None:
    text = [
        line(1.0, "runc:[2:INIT][70]", 0.0, 0.0, 1.0, FUTEX),
        line(1.1, "sh[70]", 0.0, 0.0, 1.0, FUTEX),
        line(2.0, "runc:[2:INIT][40]", 0.0, 0.0, 1.0, FUTEX),
        line(2.1, "python3[40]", 0.0, 0.0, 1.0, FUTEX),
        line(3.0, "runc:[2:INIT][90]", 0.0, 0.0, 1.0, FUTEX),  # never ran a command: left out
    ]
    assert [(workload.pid, workload.command) for workload in workloads(text)] == [(70, "sh"), (40, "python3")]


def test_a_missing_recording_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(OffCpuError, match="perf"):
        read_recording(str(tmp_path) + "/absent.data")


def test_the_command_says_in_one_line_why_it_cannot_read_a_recording(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(tmp_path / "absent.data")]) == 1
    error = capsys.readouterr().err
    assert error.startswith("offcpu: ") and error.count("\n") == 1
