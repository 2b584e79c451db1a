"""The console a command's messages go to: a live progress bar on a terminal, plain lines in a log.

Progress messages (log records carrying a :class:`~scalable_assoc.progress.Progress`)
are drawn as one live line (``\\r``, bar, percent, rate, ETA) when the stream is
a terminal; other messages get lines of their own above it. When the stream is
not a terminal (the log of a scheduled job), progress messages are plain lines:
the first and last of each phase always, others at most every ``plain_interval``
seconds. Either way, once the command has said something, ``heartbeat`` seconds
without output print what is going on (``  still fitting: 3/10 chunks, 25s``), so
a run is never silent for long.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TextIO

from scalable_assoc.progress import Progress, progress_of

#: Seconds between two plain progress lines of one phase, and of silence before a heartbeat line.
PLAIN_INTERVAL = 10.0
HEARTBEAT = 10.0
_BAR = 24


def duration(seconds: float) -> str:
    """``0:07``, ``12:34``, ``1:02:03``."""
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def live_line(progress: Progress, elapsed: float | None = None) -> str:
    """One terminal line: ``fitting [#####-----] 42% 12/30 chunks, 3.4 chunks/s, ETA 0:05``."""
    elapsed = progress.elapsed if elapsed is None else elapsed
    filled = _BAR if progress.total <= 0 else min(_BAR, int(_BAR * progress.done / progress.total))
    bar = "#" * filled + "-" * (_BAR - filled)
    worked = progress.done - progress.initial
    rate = worked / elapsed if worked > 0 and elapsed > 0 else None
    if progress.finished:
        tail = f"done in {duration(elapsed)}"
    elif rate is None:
        tail = f"ETA --, {duration(elapsed)}"
    else:
        tail = f"{rate:.3g} {progress.unit}/s, ETA {duration(max(progress.total - progress.done, 0) / rate)}"
    return f"{progress.label} [{bar}] {progress.percent:3.0f}% {progress.done}/{progress.total} {progress.unit}, {tail}"


class ConsoleFormat(logging.Formatter):
    """Messages as people read them on stderr: progress and notes as they are, ``warning: ...`` for warnings."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        return f"warning: {message}" if record.levelno >= logging.WARNING else message


class ConsoleHandler(logging.Handler):
    """Writes the package's messages to ``stream``; see the module's description.

    Parameters
    ----------
    stream
        Where to write (stderr).
    terminal
        Draw a live line; default: ``stream.isatty()``.
    plain_interval, heartbeat
        Seconds between plain progress lines of a phase; seconds of silence before a heartbeat line (None: none).
    clock
        Seconds clock (tests pass a fake one).
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        terminal: bool | None = None,
        plain_interval: float = PLAIN_INTERVAL,
        heartbeat: float | None = HEARTBEAT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(logging.INFO)
        self.stream = stream
        if terminal is None:
            isatty = getattr(stream, "isatty", None)
            terminal = bool(isatty()) if isatty is not None else False
        self.terminal = terminal
        self.plain_interval = plain_interval
        self.heartbeat = heartbeat
        self.clock = clock
        self.last_output = clock()
        self._printed: dict[tuple[str, str], float] = {}  # last plain line of each unfinished phase
        self._current: tuple[Progress, float] | None = None  # the latest progress of an unfinished phase, when it came
        self._live = ""  # the live line now on the terminal
        self._spoken = False  # written anything yet
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if heartbeat is not None:
            self._thread = threading.Thread(target=self._beat, name="scalable-assoc-console-heartbeat", daemon=True)
            self._thread.start()

    # -- records --------------------------------------------------------------------------------

    def emit(self, record: logging.LogRecord) -> None:
        try:
            progress = progress_of(record)
            now = self.clock()
            if progress is None:
                self._line(self.format(record), now)
                return
            self._current = None if progress.finished else (progress, now)
            if self.terminal:
                self._draw(live_line(progress), now, keep=not progress.finished)
                return
            key = (progress.phase, progress.label)
            last = self._printed.get(key)
            if progress.finished or last is None or now - last >= self.plain_interval:
                self._line(self.format(record), now)
                if progress.finished:
                    self._printed.pop(key, None)
                else:
                    self._printed[key] = now
        except Exception:
            self.handleError(record)

    def beat(self) -> None:
        """Print a heartbeat line if nothing was written for ``heartbeat`` seconds (the timer thread calls this)."""
        if self.heartbeat is None:
            return
        self.acquire()
        try:
            now = self.clock()
            # Quiet before the first message is a command checking its inputs (a refusal is then its only line).
            if not self._spoken or now - self.last_output < self.heartbeat:
                return
            current = self._current
            if current is None:
                self._line(f"  still working, {now - self.last_output:.0f}s since the last message", now)
                return
            progress, received = current
            elapsed = progress.elapsed + (now - received)
            if self.terminal:
                self._draw(live_line(progress, elapsed), now, keep=True)
            else:
                self._line(f"  still {progress.label}: {progress.done}/{progress.total} {progress.unit}, {elapsed:.0f}s", now)
                self._printed[(progress.phase, progress.label)] = now  # the phase's next plain line comes 10 s after this one
        finally:
            self.release()

    def end_line(self) -> None:
        """Leave the terminal on a fresh line (a live line of an unfinished phase stays as it is), for text printed past the handler."""
        self.acquire()
        try:
            if self._live:
                self.stream.write("\n")
                self._live = ""
                self.flush()
        finally:
            self.release()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        self.end_line()
        super().close()

    def flush(self) -> None:
        flush = getattr(self.stream, "flush", None)
        if flush is not None:
            flush()

    # -- output ---------------------------------------------------------------------------------

    def _line(self, text: str, now: float) -> None:
        """A message on a line of its own; on a terminal above the live line, which is drawn again below it."""
        live = self._live
        if live:
            self.stream.write("\r" + " " * len(live) + "\r")
        self.stream.write(text + "\n")
        self._spoken = True
        if live:
            self.stream.write(live)
        self.flush()
        self.last_output = now

    def _draw(self, text: str, now: float, keep: bool) -> None:
        """Replace the live line with ``text``; ``keep=False`` ends it with a newline (the phase finished)."""
        text = text[: max(self._columns() - 1, 20)]
        pad = " " * max(len(self._live) - len(text), 0)
        self.stream.write("\r" + text + pad + ("" if keep else "\n"))
        self._live = text if keep else ""
        self._spoken = True
        self.flush()
        self.last_output = now

    def _columns(self) -> int:
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            columns = 0
        return columns if columns >= 40 else 100  # a pseudo-terminal may say 0

    def _beat(self) -> None:
        assert self.heartbeat is not None
        while not self._stop.wait(min(1.0, self.heartbeat / 4)):
            try:
                self.beat()
            except Exception:  # a console that cannot be written must not end the run
                return
