"""Checks of single plan values and mappings, with errors that name the plan file and the key at fault."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scalable_assoc.errors import PlanError, did_you_mean


def location(source: Path, key: str) -> str:
    """Where in the plan: ``plan FILE, key 'KEY'`` (or ``top level``), the start of every error."""
    return f"plan {source}, key '{key}'" if key else f"plan {source}, top level"


def checked_mapping(source: Path, key: str, mapping: Any, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict:
    """``mapping`` if it is a mapping whose keys are all ``allowed`` (closest match suggested) and include every ``required`` one."""
    if not isinstance(mapping, dict):
        raise PlanError(f"{location(source, key)}: expected a mapping (key: value), got {type(mapping).__name__}")
    for name in mapping:
        if name not in allowed:
            hint = did_you_mean(str(name), allowed)
            path = f"{key}.{name}" if key else str(name)
            raise PlanError(f"plan {source}: unknown key '{path}'.{hint} Allowed here: {', '.join(allowed)}.")
    for name in required:
        if name not in mapping:
            path = f"{key}.{name}" if key else name
            raise PlanError(f"plan {source}: missing required key '{path}'.")
    return mapping


def nonempty_string(source: Path, key: str, value: Any) -> str:
    """``value`` if it is a string with more than white space."""
    if not isinstance(value, str) or not value.strip():
        raise PlanError(f"{location(source, key)}: expected a non-empty string, got {value!r}")
    return value


def plan_path(source: Path, key: str, value: Any, allow_outside: bool) -> Path:
    """A path named by the plan, resolved (symlinks followed) against the plan's folder, which it must stay inside.

    A plan may come from someone else (one plan sent to every biobank), so unless
    ``allow_outside`` it may only name files in its own folder or below it.
    """
    text = nonempty_string(source, key, value)
    folder = source.parent.resolve()
    path = (folder / text).resolve()
    if not allow_outside and not path.is_relative_to(folder):
        raise PlanError(
            f"{location(source, key)}: {text!r} resolves to {path}, outside the plan's folder {folder}. A plan may only name "
            "files in its own folder or below it, so that a plan written elsewhere cannot read other files on this machine. "
            "Move (or copy) the file beside the plan, or, if you trust this plan, pass --allow-outside-paths to "
            "'scalable-assoc run' (allow_outside_paths=True from Python)."
        )
    return path


def name_list(source: Path, key: str, value: Any) -> tuple[str, ...]:
    """One name or a list of non-empty names, as a tuple."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise PlanError(f"{location(source, key)}: expected a list of names, got {value!r}")
    return tuple(value)
