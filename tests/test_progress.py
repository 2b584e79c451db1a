"""Progress of long work: the library's rate-limited progress messages and the console that draws them.

A run is never silent for more than 10 seconds: on a terminal a live bar with
rate and ETA, in a log plain lines at 0%, at 100% and at most every 10 s per
phase, and a heartbeat line after 10 s without output.
"""

from __future__ import annotations

import io
import logging
import re
import subprocess
import sys
import time
from pathlib import Path

from distributed import LocalCluster

from scalable_assoc.progress import Progress, ProgressReporter, process_age_seconds, progress_of
from scalable_assoc.report.progress_console import ConsoleHandler, duration
from scalable_assoc.simulate import simulate_study


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _logger(name: str) -> tuple[logging.Logger, Records]:
    logger = logging.getLogger(f"scalable_assoc.tests.{name}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    records = Records()
    logger.handlers = [records]
    return logger, records


def _progress(phase: str, done: int, total: int, elapsed: float, label: str = "fitting", initial: int = 0) -> Progress:
    return Progress(phase, label, done, total, "chunks", elapsed, initial)


def _record(progress: Progress | None, message: str = "a note") -> logging.LogRecord:
    record = logging.LogRecord("scalable_assoc.x", logging.INFO, __file__, 1, message, None, None)
    if progress is not None:
        record.progress = progress
        record.msg = f"  {progress.label}: {progress.done}/{progress.total} ({progress.percent:.0f}%)"
    return record


def test_the_reporter_speaks_at_0_and_100_percent_and_at_most_once_a_second_between() -> None:
    logger, records = _logger("reporter")
    clock = FakeClock()
    reporter = ProgressReporter(logger, "fit", 100, "chunks", label="fitting", clock=clock)
    reporter.start()
    for _ in range(99):
        clock.now += 0.1  # ten chunks a second
        reporter.advance()
    clock.now += 0.1
    reporter.advance()
    reporter.finish()  # already at 100%: not said twice
    done = [progress_of(r).done for r in records.records]  # type: ignore[union-attr]
    assert done[0] == 0 and done[-1] == 100 and done.count(100) == 1
    assert 9 <= len(done) <= 12, done  # ~10 s of work: about one message a second
    times = [progress_of(r).elapsed for r in records.records]  # type: ignore[union-attr]
    assert all(b - a >= 1.0 - 1e-9 for a, b in zip(times[1:-2], times[2:-1], strict=True)), times
    first, last = progress_of(records.records[0]), progress_of(records.records[-1])
    assert first is not None and last is not None
    assert first.percent == 0 and first.rate is None and last.finished and abs(last.rate - 10.0) < 1e-6  # type: ignore[operator]
    assert records.records[0].getMessage() == "  fitting: 0/100 chunks (0%), 0.0s"
    assert records.records[-1].getMessage() == "  fitting: 100/100 chunks (100%), 10.0s"


def test_resumed_work_counts_for_the_percentage_not_the_rate() -> None:
    logger, records = _logger("resumed")
    clock = FakeClock()
    reporter = ProgressReporter(logger, "fit", 10, "chunks", initial=6, clock=clock)
    reporter.start()
    clock.now += 2.0
    reporter.advance()
    progress = progress_of(records.records[-1])
    assert progress is not None and progress.percent == 70 and progress.rate == 0.5 and progress.eta == 6.0


def test_plain_lines_at_0_and_100_percent_and_at_most_every_10_seconds_per_phase() -> None:
    clock = FakeClock()
    stream = io.StringIO()
    console = ConsoleHandler(stream, terminal=False, heartbeat=None, clock=clock)
    for second in range(31):
        console.handle(_record(_progress("fit", second, 30, float(second))))
        if second == 15:
            console.handle(_record(None, "a note of its own"))
        clock.now += 1.0
    lines = stream.getvalue().splitlines()
    assert lines == [
        "  fitting: 0/30 (0%)",
        "  fitting: 10/30 (33%)",
        "a note of its own",
        "  fitting: 20/30 (67%)",
        "  fitting: 30/30 (100%)",
    ]
    console.close()


def test_a_heartbeat_after_10_seconds_of_silence() -> None:
    clock = FakeClock()
    stream = io.StringIO()
    console = ConsoleHandler(stream, terminal=False, heartbeat=10.0, clock=clock)
    console._stop.set()  # the test calls beat() itself, at fake times
    clock.now += 11.0
    console.beat()  # nothing said yet: a command checking its inputs, whose refusal is its only line
    console.handle(_record(_progress("fit", 0, 50, 0.0)))
    clock.now += 9.0
    console.beat()  # 9 s: quiet is fine
    clock.now += 3.0
    console.beat()
    clock.now += 1.0
    console.beat()  # just said something
    clock.now += 10.0
    console.beat()
    clock.now += 1.0
    console.handle(_record(_progress("fit", 10, 50, 24.0)))  # a heartbeat counts as the phase's line: not 1 s later
    console.handle(_record(_progress("fit", 50, 50, 30.0)))
    clock.now += 10.0
    console.beat()
    lines = stream.getvalue().splitlines()
    assert lines == [
        "  fitting: 0/50 (0%)",
        "  still fitting: 0/50 chunks, 12s",
        "  still fitting: 0/50 chunks, 23s",
        "  fitting: 50/50 (100%)",
        "  still working, 10s since the last message",
    ]
    console.close()


def test_the_heartbeat_thread_speaks_during_a_long_wait() -> None:
    stream = io.StringIO()
    console = ConsoleHandler(stream, terminal=False, heartbeat=0.2)
    console.handle(_record(_progress("fit", 0, 5, 0.0)))
    try:
        deadline = __import__("time").monotonic() + 5
        while "still fitting" not in stream.getvalue() and __import__("time").monotonic() < deadline:
            __import__("time").sleep(0.05)
    finally:
        console.close()
    assert "  still fitting: 0/5 chunks" in stream.getvalue()


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_one_live_line_with_rate_and_eta_and_messages_above_it() -> None:
    clock = FakeClock()
    stream = FakeTerminal()
    console = ConsoleHandler(stream, heartbeat=None, clock=clock)
    assert console.terminal
    console.handle(_record(_progress("fit", 0, 40, 0.0)))
    console.handle(_record(_progress("fit", 10, 40, 5.0)))
    console.handle(_record(None, "a note"))
    console.handle(_record(_progress("fit", 40, 40, 20.0)))
    console.close()
    text = stream.getvalue()
    assert "\n" not in text.split("a note")[0].replace("\r", "\n").split("\n")[-1]  # the note starts a cleared line
    frames = [frame.rstrip() for frame in re.split(r"[\r\n]", text) if frame.strip()]
    assert frames[0].startswith("fitting [") and " 0% 0/40 chunks, ETA --" in frames[0]
    assert "25% 10/40 chunks, 2 chunks/s, ETA 0:15" in frames[1]
    assert "a note" in frames
    assert frames[-1].endswith("100% 40/40 chunks, done in 0:20")
    assert text.endswith("\n") and text.count("a note\n") == 1
    assert duration(3725) == "1:02:05"


def test_a_run_whose_stderr_is_a_log_shows_every_phase_from_0_to_100_percent(tmp_path: Path, dask_cluster: LocalCluster) -> None:
    study = simulate_study(tmp_path / "study", participants=300, seed=3, n_species=60, n_pathways=20)
    # A prevalence filter above what the stores' sparse copy covers (25%), so the per-sample sums take a pass over the data.
    plan_text = study.plan_path.read_text()
    assert "min_prevalence: 0.05" in plan_text
    study.plan_path.write_text(plan_text.replace("min_prevalence: 0.05", "min_prevalence: 0.3") + "min_cases: 2\n")
    command = [sys.executable, "-m", "scalable_assoc.cli", "run", str(study.plan_path), "--out", str(tmp_path / "out")]
    command += ["--scheduler", dask_cluster.scheduler_address, "--chunk-features", "4"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert "\r" not in done.stderr
    for pattern in (
        r"^  converting \S+: 0/\d+ feature blocks \(0%\)",
        r"^  filtering \([^)]*\): 0/\d+ blocks \(0%\)",
        r"^  chunks 0/\d+ \(0%\)",
    ):
        assert any(re.match(pattern, line) for line in lines), (pattern, done.stderr)
    for pattern in (
        r"^  converting \S+: (\d+)/\1 feature blocks \(100%\)",
        r"^  filtering \([^)]*\): (\d+)/\1 blocks \(100%\)",
        r"^  chunks (\d+)/\1 \(100%\)",
    ):
        assert any(re.match(pattern, line) for line in lines), (pattern, done.stderr)


def test_the_progress_module_needs_only_the_standard_library() -> None:
    import ast

    import scalable_assoc.progress as module

    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and n.level == 0}
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


def test_an_unfinished_bar_ends_its_line_before_an_error_is_printed() -> None:
    stream = FakeTerminal()
    console = ConsoleHandler(stream, heartbeat=None)
    console.handle(_record(_progress("fit", 3, 40, 1.0)))
    assert not stream.getvalue().endswith("\n")
    console.end_line()
    assert stream.getvalue().endswith("\n") and stream.getvalue().count("\n") == 1
    console.close()
    assert stream.getvalue().count("\n") == 1


def test_a_process_age_is_no_longer_than_the_parent_saw_it_live() -> None:
    """A new process's age when it prints is between 0 and the wall time its parent measured around its whole life.

    The age behind the manifest's ``first_task``: counted from the boot-time clock, not from
    ``/proc/stat``'s whole-second boot time (psutil), which made ages up to a second too long.
    """
    assert process_age_seconds() is not None and process_age_seconds() > 0
    code = "from scalable_assoc.progress import process_age_seconds; print(process_age_seconds())"
    for _ in range(3):
        started = time.perf_counter()
        printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        lived = time.perf_counter() - started
        age = float(printed)
        assert 0 < age <= lived + 0.011, (age, lived)  # + one clock tick: the start is counted in whole 10 ms ticks
