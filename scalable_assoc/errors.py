"""Errors that reach the user as a one-paragraph message and exit status 2."""

from __future__ import annotations


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
