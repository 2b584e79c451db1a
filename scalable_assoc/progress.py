"""Progress of long work as log records a console can draw: ``(phase, done, total, unit)``.

The library never prints. A long phase (table conversion, the filter pass,
fitting, sufficient statistics, meta-analysis) makes a :class:`ProgressReporter`
and tells it how far it got; the reporter logs an INFO message that reads well
on its own (``  chunks 3/10 (30%), 4.2s``) and carries a :class:`Progress` in
the record's ``progress`` attribute, so that a console handler can draw a live
bar instead (see :func:`progress_of`). Messages go out at the start, at the end,
and in between at most once per ``interval`` seconds.

Standard library only: every layer may report progress.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

#: Seconds between two progress messages of one phase (the first and last always go out).
REPORT_INTERVAL = 1.0
#: ``%``-style template of a progress message; its fields are those of :meth:`Progress.fields`.
DEFAULT_TEMPLATE = "  %(label)s: %(done)d/%(total)d %(unit)s (%(percent).0f%%), %(elapsed).1fs"


@dataclass(frozen=True)
class Progress:
    """How far one phase got: ``done`` of ``total`` ``unit`` after ``elapsed`` seconds.

    ``initial`` is what was already done when the phase started (chunks an
    earlier run finished): it counts for the percentage, not for the rate.
    ``label`` names the phase for people (``fitting``, ``converting x.tsv``).
    """

    phase: str
    label: str
    done: int
    total: int
    unit: str
    elapsed: float
    initial: int = 0

    @property
    def finished(self) -> bool:
        return self.done >= self.total

    @property
    def percent(self) -> float:
        return 100.0 if self.total <= 0 else 100.0 * self.done / self.total

    @property
    def rate(self) -> float | None:
        """Units per second in this phase so far; None before the first one."""
        worked = self.done - self.initial
        return worked / self.elapsed if worked > 0 and self.elapsed > 0 else None

    @property
    def eta(self) -> float | None:
        """Seconds left at the rate so far; None while there is no rate."""
        rate = self.rate
        return None if rate is None else max(self.total - self.done, 0) / rate

    def fields(self) -> dict[str, object]:
        """The values a message template may name."""
        return {
            "phase": self.phase,
            "label": self.label,
            "done": self.done,
            "total": self.total,
            "unit": self.unit,
            "percent": self.percent,
            "elapsed": self.elapsed,
        }


def progress_of(record: logging.LogRecord) -> Progress | None:
    """The :class:`Progress` a log record carries, None for any other message."""
    progress = getattr(record, "progress", None)
    return progress if isinstance(progress, Progress) else None


class ProgressReporter:
    """Logs the progress of one phase: at :meth:`start`, when done reaches total, else at most once per ``interval`` s.

    Parameters
    ----------
    logger
        Where the messages go (the calling module's logger).
    phase
        A short name that identifies the phase (``convert``, ``filter``, ``fit``, ...).
    total, unit
        How many of what the phase does (``12``, ``chunks``).
    label
        The phase for people; defaults to ``phase``.
    template
        ``%``-style message over :meth:`Progress.fields`; the same text is what a
        log file or a non-terminal console shows.
    initial
        Already done when the phase starts (counts for the percentage, not the rate).
    clock, interval
        Seconds clock and the least time between two messages in the middle of the phase.
    """

    def __init__(
        self,
        logger: logging.Logger,
        phase: str,
        total: int,
        unit: str,
        *,
        label: str | None = None,
        template: str = DEFAULT_TEMPLATE,
        initial: int = 0,
        clock: Callable[[], float] = time.monotonic,
        interval: float = REPORT_INTERVAL,
    ) -> None:
        self.logger = logger
        self.phase = phase
        self.label = label or phase
        self.total = int(total)
        self.unit = unit
        self.template = template
        self.initial = self.done = int(initial)
        self.clock = clock
        self.interval = float(interval)
        self.started = clock()
        self._last: float | None = None
        self._ended = False

    def start(self) -> None:
        """The phase begins: always reported (0%, or what an earlier run left done)."""
        self.started = self.clock()
        self._emit(self.started)

    def advance(self, steps: int = 1) -> None:
        """``steps`` more units done."""
        self.update(self.done + steps)

    def update(self, done: int) -> None:
        """``done`` units done so far; reported if it ends the phase or ``interval`` s passed since the last report."""
        self.done = int(done)
        now = self.clock()
        if self.done >= self.total:
            if not self._ended:
                self._emit(now)
        elif self._last is None or now - self._last >= self.interval:
            self._emit(now)

    def finish(self) -> None:
        """The phase ended: report 100% unless already reported."""
        self.update(max(self.done, self.total))

    def snapshot(self, now: float | None = None) -> Progress:
        now = self.clock() if now is None else now
        return Progress(self.phase, self.label, self.done, self.total, self.unit, max(now - self.started, 0.0), self.initial)

    def _emit(self, now: float) -> None:
        progress = self.snapshot(now)
        self._last = now
        self._ended = progress.finished
        if self.logger.isEnabledFor(logging.INFO):
            self.logger.info(self.template, progress.fields(), extra={"progress": progress})


def process_age_seconds() -> float | None:
    """Seconds since this process started (its ``fork``), with the kernel's clock-tick resolution (10 ms); None if unknown.

    Read from ``/proc/self/stat`` against the boot-time clock, both counted from
    the same boot. Not ``psutil.Process().create_time()``: that adds the start to
    ``/proc/stat``'s boot time, which is a whole second, so a process's age came
    out up to a second too long (1.05 s on one test machine). Linux only; other
    systems return None.
    """
    try:
        with open("/proc/self/stat", "rb") as handle:
            after_name = handle.read().rsplit(b")", 1)[1].split()
        started = int(after_name[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime, in clock ticks since boot
        return time.clock_gettime(time.CLOCK_BOOTTIME) - started
    except (OSError, ValueError, IndexError, AttributeError):
        return None
