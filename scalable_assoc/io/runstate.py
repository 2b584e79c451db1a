"""One run per output folder, and what a scheduler may ask of it: is it running, finished, failed?

Both live in the run's work folder (``OUT/.scalable_assoc``):

- ``lock.json``, created exclusively (``O_EXCL``) by the run that holds the
  folder, with its host, process id and start time; removed when it ends. A
  second run on the folder stops at once (:class:`FolderInUse`, exit 75,
  EX_TEMPFAIL: try again later). A lock whose process is gone from this host
  is taken over, with a warning; one held on another host is respected, since
  its process cannot be checked from here.
- ``status.json``, rewritten atomically at each phase: ``state``, ``chunks_done``,
  ``chunks_total``, ``started``, ``finished``, ``plan_hash`` and ``error``.

Files only; no Dask.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scalable_assoc.io.atomic import write_json

logger = logging.getLogger(__name__)
#: The logger every module of the package logs under (``logging.getLogger(__name__)``).
PACKAGE_LOGGER = "scalable_assoc"

LOCK_FILE = "lock.json"
STATUS_FILE = "status.json"
#: The run log in the output folder: one JSON object per line (time, run, phase, event, and details).
RUN_LOG = "run_log.jsonl"
#: States a run's status can report (README "Scheduled runs").
STATES = ("running", "finished", "failed", "interrupted")
#: Exit status of a command refused because another run holds its folder (sysexits EX_TEMPFAIL).
EXIT_FOLDER_IN_USE = 75


class FolderInUse(Exception):
    """Another run holds the output folder; the message names it (host, pid, start time)."""

    exit_code = EXIT_FOLDER_IN_USE


def timestamp() -> str:
    """The current time as ISO 8601 UTC, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _describe(holder: dict[str, Any]) -> str:
    return f"process {holder.get('pid')} on host {holder.get('host')}, running since {holder.get('started')}"


@contextmanager
def folder_lock(work_dir: Path, command: str) -> Iterator[dict[str, Any]]:
    """Hold ``work_dir`` for one run; raise :class:`FolderInUse` if another live run holds it.

    Yields the lock record (host, pid, started, command).
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / LOCK_FILE
    record = {"host": socket.gethostname(), "pid": os.getpid(), "started": timestamp(), "command": command}
    for _ in range(3):
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_json(path) or {}
            same_host = holder.get("host") == record["host"]
            pid = holder.get("pid")
            if same_host and isinstance(pid, int) and pid != os.getpid() and not _alive(pid):
                logger.warning("taking over the lock of %s: %s is no longer running", work_dir.parent, _describe(holder))
                path.unlink(missing_ok=True)
                continue
            if not holder:
                # Being written this very moment by another run: its record follows at once.
                continue
            raise FolderInUse(
                f"the output folder {work_dir.parent} is in use by another run ({_describe(holder)}; lock {path}). "
                "Wait for it to end, or give another --out; if that process is gone for good, remove the lock file"
            ) from None
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(record, handle)
        break
    else:
        raise FolderInUse(f"the output folder {work_dir.parent} is being taken by another run (lock {path}); try again")
    try:
        yield record
    finally:
        if (_read_json(path) or {}).get("pid") == os.getpid():
            path.unlink(missing_ok=True)


def remove_leftovers(out_dir: Path, work_dir: Path) -> list[Path]:
    """Remove temporary files and folders (``.<name>.<id>.tmp``) that killed runs left in the run's folders.

    Only called while holding the folder's lock, so none of them belongs to a live run.
    Returns what was removed.
    """
    removed = []
    folders = (
        [out_dir, work_dir, *(p for p in work_dir.iterdir() if p.is_dir() and not p.name.startswith("."))]
        if work_dir.is_dir()
        else [out_dir]
    )
    for folder in folders:
        if not folder.is_dir():
            continue
        for leftover in folder.glob(".*.tmp"):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed


class RunLog:
    """Appends one JSON object per line to the output folder's run log, for log collectors and post-mortems.

    Every line has ``time`` (ISO 8601 UTC), ``run`` (the run's start time and
    process id), ``phase`` (``prepare``, ``cluster``, ``filter``, ``fit``,
    ``gather``) and ``event`` (``phase``, ``message``, ``finished``, ``failed``
    or ``interrupted``); a message line also has ``message`` and ``level``:
    while the run log is open, every message of the ``scalable_assoc`` loggers
    (INFO and above) is written to it too. Lines of every run on the folder
    follow each other, so the file is the folder's history.
    """

    def __init__(self, path: Path, holder: dict[str, Any]) -> None:
        self.path = path
        self.run = f"{holder['started']} pid {holder['pid']}"
        self.current = "start"
        self._handle: Any = None
        self._package = logging.getLogger(PACKAGE_LOGGER)
        self._handler = _RunLogHandler(self)
        self._level = logging.NOTSET

    def __enter__(self) -> RunLog:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = self.path.open("a", encoding="utf-8")
        self.event("started")
        self._package.addHandler(self._handler)
        # INFO messages (progress) reach the file even where nobody configured logging.
        self._level = self._package.level
        if self._package.getEffectiveLevel() > logging.INFO:
            self._package.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        self._package.removeHandler(self._handler)
        self._package.setLevel(self._level)
        self._handle.close()

    def event(self, event: str, **details: Any) -> None:
        """Write one line now (flushed, so a killed run's last line is there)."""
        record = {"time": timestamp(), "run": self.run, "phase": self.current, "event": event, **details}
        self._handle.write(json.dumps(record, default=str) + "\n")
        self._handle.flush()

    def phase(self, name: str) -> None:
        """Mark the start of a phase."""
        self.current = name
        self.event("phase")


class _RunLogHandler(logging.Handler):
    """Writes each message of the package's loggers to the run log as a ``message`` event."""

    def __init__(self, run_log: RunLog) -> None:
        super().__init__(logging.INFO)
        self.run_log = run_log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.run_log.event("message", message=record.getMessage(), level=record.levelname.lower())
        except Exception:  # a full disk must not end the run over a log line
            self.handleError(record)


@dataclass
class RunStatus:
    """What ``status.json`` says of a run (the keys of ``scalable-assoc status --json``)."""

    state: str
    plan_hash: str | None = None
    started: str | None = None
    finished: str | None = None
    chunks_done: int = 0
    chunks_total: int = 0
    error: str | None = None
    host: str | None = None
    pid: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def write(self, work_dir: Path) -> None:
        """Replace ``status.json`` atomically."""
        write_json(work_dir / STATUS_FILE, asdict(self))


def read_status(out_dir: Path) -> RunStatus | None:
    """The status of the run in ``out_dir``, None if no run ever started there.

    A status that says ``running`` while no live process holds the lock on this
    host is reported as ``interrupted`` (the run was killed).

    Parameters
    ----------
    out_dir
        The output folder of a run.

    Returns
    -------
    RunStatus or None
        ``state`` (``running``, ``finished``, ``failed`` or ``interrupted``),
        ``chunks_done``, ``chunks_total``, ``started``, ``finished`` (ISO 8601
        UTC), ``plan_hash`` and the ``error`` of a failed run; None when no run
        ever started in ``out_dir``.

    Examples
    --------
    >>> from scalable_assoc import read_status
    >>> status = read_status(tmp / "results")
    >>> status.state, status.chunks_done == status.chunks_total
    ('finished', True)
    """
    work_dir = out_dir / ".scalable_assoc"
    recorded = _read_json(work_dir / STATUS_FILE)
    if recorded is None:
        return None
    known: dict[str, Any] = {name: recorded.get(name) for name in RunStatus.__dataclass_fields__ if name in recorded}
    status = RunStatus(**known)
    if status.state == "running":
        holder = _read_json(work_dir / LOCK_FILE)
        pid = (holder or {}).get("pid")
        on_this_host = (holder or {}).get("host") == socket.gethostname()
        if holder is None or (on_this_host and not (isinstance(pid, int) and _alive(pid))):
            status.state = "interrupted"
    return status
