"""Cluster profiles: a YAML file saying where a run's workers come from (``run --cluster FILE``).

Data only (``yaml.safe_load``), every key known, typed and checked before any
work starts; a bad file is a :class:`UserInputError` naming the file and the
key. ``deploy/slurm.yaml`` documents every key. One kind so far: ``slurm``
(workers submitted as SLURM jobs by dask-jobqueue, see
:mod:`scalable_assoc.engine.slurm`).
"""

from __future__ import annotations

import dataclasses
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from dask.utils import parse_bytes

from scalable_assoc.errors import UserInputError, did_you_mean

#: The kinds of cluster a profile can describe.
KINDS = ("slurm",)
#: Every key of a profile, in the order deploy/slurm.yaml documents them.
KEYS = (
    "kind",
    "queue",
    "account",
    "cores",
    "processes",
    "memory",
    "walltime",
    "jobs",
    "host",
    "interface",
    "shared_directory",
    "python",
    "job_directives",
    "prologue",
    "worker_timeout",
)
#: SLURM's time formats: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS.
_WALLTIME = re.compile(r"^(\d+-\d+(:\d{1,2}){0,2}|\d+(:\d{1,2}){0,2})$")


@dataclass(frozen=True)
class ClusterProfile:
    """A validated cluster profile (see ``deploy/slurm.yaml`` for what each field means)."""

    source: Path
    kind: str = "slurm"
    queue: str | None = None
    account: str | None = None
    cores: int = 1
    processes: int = 1
    memory: str = "4GiB"
    walltime: str = "01:00:00"
    jobs: int = 1
    host: str = "127.0.0.1"
    interface: str | None = None
    #: ``None``: the default under the output folder, chosen by the command (see :meth:`with_shared_directory`).
    shared_directory: Path | None = None
    python: str = sys.executable
    job_directives: tuple[str, ...] = ()
    prologue: tuple[str, ...] = ()
    worker_timeout: float = 300.0

    @property
    def memory_bytes(self) -> int:
        return int(parse_bytes(self.memory))

    def with_shared_directory(self, default: str | Path) -> ClusterProfile:
        """This profile, with ``default`` as its shared directory unless the file names one."""
        if self.shared_directory is not None:
            return self
        return dataclasses.replace(self, shared_directory=Path(default).resolve())


def _fail(source: Path, key: str, problem: str) -> UserInputError:
    return UserInputError(f"cluster profile {source}, key '{key}': {problem} (every key is described in deploy/slurm.yaml)")


def _text(source: Path, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or any(c in value for c in "\n\r"):
        raise _fail(source, key, f"expected a non-empty one-line string, got {value!r}")
    return value.strip()


def _positive_int(source: Path, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(source, key, f"expected a positive whole number, got {value!r}")
    return value


def _lines(source: Path, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item.strip() and "\n" not in item for item in value):
        raise _fail(source, key, f"expected a list of one-line strings, got {value!r}")
    return tuple(item.strip() for item in value)


def parse_cluster_profile(raw: Any, source: Path) -> ClusterProfile:
    """Validate an already-parsed profile mapping (``source`` names it in errors and anchors a relative ``shared_directory``)."""
    if not isinstance(raw, dict):
        raise UserInputError(
            f"cluster profile {source}: expected a mapping of keys (kind: slurm, queue: ..., see deploy/slurm.yaml), got "
            f"{type(raw).__name__}"
        )
    for key in raw:
        if key not in KEYS:
            hint = did_you_mean(str(key), KEYS)
            raise UserInputError(
                f"cluster profile {source}: unknown key '{key}'.{hint} Allowed: {', '.join(KEYS)} (see deploy/slurm.yaml)."
            )
    if "kind" not in raw:
        raise UserInputError(
            f"cluster profile {source}: missing required key 'kind'; write 'kind: slurm' (known kinds: {', '.join(KINDS)})"
        )
    kind = raw["kind"]
    if kind not in KINDS:
        raise _fail(source, "kind", f"unknown kind {kind!r}; known kinds: {', '.join(KINDS)}")
    values: dict[str, Any] = {"kind": kind}
    for key in ("queue", "account", "host", "interface", "python"):
        if key in raw:
            values[key] = _text(source, key, raw[key])
    for key in ("cores", "processes", "jobs"):
        if key in raw:
            values[key] = _positive_int(source, key, raw[key])
    cores = values.setdefault("cores", 1)
    processes = values.setdefault("processes", cores)
    if processes > cores:
        raise _fail(
            source,
            "processes",
            f"{processes} single-threaded worker processes need as many cores, but 'cores' is {cores}; raise 'cores' or lower 'processes'",
        )
    if "memory" in raw:
        memory = raw["memory"]
        try:
            amount = parse_bytes(memory) if isinstance(memory, str) else -1
        except (ValueError, TypeError):
            amount = -1
        if amount <= 0:
            raise _fail(source, "memory", f'expected an amount of memory per job such as "4GiB" or "16GB", got {memory!r}')
        values["memory"] = memory.strip()
    if "walltime" in raw:
        walltime = raw["walltime"]
        if not isinstance(walltime, str) or not _WALLTIME.match(walltime.strip()):
            raise _fail(source, "walltime", f'expected a SLURM time limit in quotes such as "HH:MM:SS" or "D-HH:MM:SS", got {walltime!r}')
        values["walltime"] = walltime.strip()
    for key in ("job_directives", "prologue"):
        if key in raw:
            values[key] = _lines(source, key, raw[key])
    if "shared_directory" in raw:
        folder = Path(_text(source, "shared_directory", raw["shared_directory"])).expanduser()
        values["shared_directory"] = (source.parent / folder).resolve()
    if "worker_timeout" in raw:
        timeout = raw["worker_timeout"]
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise _fail(source, "worker_timeout", f"expected a positive number of seconds, got {timeout!r}")
        values["worker_timeout"] = float(timeout)
    return ClusterProfile(source=source, **values)


def load_cluster_profile(path: str | Path) -> ClusterProfile:
    """Read and validate a cluster profile file; a :class:`UserInputError` names the file and the key at fault."""
    source = Path(path).resolve()
    if not source.is_file():
        what = "is a folder, not a profile file" if source.is_dir() else "does not exist"
        raise UserInputError(f"cluster profile {path} {what}; give a YAML file such as deploy/slurm.yaml")
    try:
        raw = yaml.safe_load(source.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise UserInputError(
            f"cluster profile {source} is not a UTF-8 text file (byte {error.start}); save it as plain UTF-8 YAML"
        ) from None
    except OSError as error:
        raise UserInputError(f"cluster profile {source} cannot be read: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise UserInputError(f"cluster profile {source}: YAML syntax error{where}: {' '.join(str(problem).split())}") from None
    return parse_cluster_profile(raw, source)
