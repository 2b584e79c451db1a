"""Errors that reach the user as a one-paragraph message and exit status 2."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable


class UserInputError(Exception):
    """Bad input: a file, plan key, column or value the user must fix.

    The message is shown verbatim (no traceback) and must name the file, key or
    column at fault and say what would fix it.
    """


class PlanError(UserInputError):
    """The plan file is malformed or names something that does not exist."""


class DataError(UserInputError):
    """An input table or store has invalid contents (IDs, values, shape)."""


class ClusterFailure(Exception):
    """The cluster could not finish the run (a task that ends every worker running it, all workers lost).

    Not the user's input: exit status 1 with this one-paragraph message, and a
    rerun resumes from the chunks already finished.
    """

    exit_code = 1


class Terminated(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM: systemd stop, SLURM at its time limit, Kubernetes deleting the pod).

    Handled like Ctrl-C (the run is marked interrupted and a rerun resumes);
    the command exits 143 (128 + SIGTERM) rather than 130.
    """

    exit_code = 143


def did_you_mean(name: str, candidates: Iterable[object]) -> str:
    """`` Did you mean 'x'?`` for a near-miss name (typo, wrong case), else an empty string: for messages naming a key or column."""
    pool = [str(c) for c in candidates]
    near = difflib.get_close_matches(str(name), pool, n=1, cutoff=0.6)
    if not near:
        # Case and punctuation differences ('mdd' for 'MDD', 'SampleID' for 'sample_id') score low
        # in difflib but are the commonest slips.
        folded = re.sub(r"[^0-9a-z]", "", str(name).lower())
        near = [c for c in pool if re.sub(r"[^0-9a-z]", "", c.lower()) == folded][:1]
    return f" Did you mean '{near[0]}'?" if near else ""
