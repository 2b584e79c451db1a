"""The library API: exactly what ``scalable_assoc.__all__`` says, each function documented (numpydoc) with an Example that runs.

The Examples form one story, run here in order with shared names (as a
notebook would): a simulated study is inspected, planned, ingested, run and its status
read; two simulated biobanks run and export their summary statistics, which
are opened, meta-analysed and pooled; a key pair is made.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
from pathlib import Path

import pytest

import scalable_assoc

pytestmark = pytest.mark.cluster

#: The order the Examples build on each other.
STORY = [
    "simulate_study",
    "inspect_table",
    "load_plan",
    "ingest_table",
    "run_study",
    "read_status",
    "write_report",
    "simulate_cohorts",
    "export_sumstats",
    "open_cohorts",
    "read_mapping",
    "meta_analyse",
    "pool_cohorts",
    "write_key_pair",
    "benchmark_methods",  # its Example is skipped (it runs a grid of studies); tests/test_methods_benchmark.py runs it
]


def _functions() -> list[str]:
    return [name for name in scalable_assoc.__all__ if inspect.isfunction(getattr(scalable_assoc, name))]


def test_all_is_exactly_what_the_package_exports() -> None:
    exports = scalable_assoc._EXPORTS
    assert sorted(scalable_assoc.__all__) == sorted(["__version__", *exports])
    for name, module in exports.items():
        assert getattr(scalable_assoc, name) is getattr(importlib.import_module(module), name), name
    assert set(scalable_assoc.__all__) <= set(dir(scalable_assoc))
    with pytest.raises(AttributeError):
        scalable_assoc.not_a_name  # noqa: B018
    assert sorted(_functions()) == sorted(STORY), "every exported function has its place in the story of Examples"


@pytest.mark.parametrize("name", sorted(scalable_assoc._EXPORTS))
def test_every_export_is_documented(name: str) -> None:
    value = getattr(scalable_assoc, name)
    doc = inspect.getdoc(value) or ""
    assert doc, f"{name} has no docstring"
    if inspect.isfunction(value):
        for section in ("Parameters\n----------", "Returns\n-------", "Examples\n--------"):
            assert section in doc, f"{name}: no '{section.splitlines()[0]}' section"
        hints = inspect.get_annotations(value)
        assert "return" in hints and all(p in hints for p in inspect.signature(value).parameters), f"{name} is not fully typed"


def test_the_examples_run_in_order(tmp_path: Path) -> None:
    names: dict[str, object] = {"tmp": tmp_path}
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for name in STORY:
        tests = finder.find(getattr(scalable_assoc, name), name, globs=names)
        assert tests and tests[0].examples, f"{name} has no Example"
        for test in tests:
            result = runner.run(test, clear_globs=False)
            assert result.failed == 0, f"the Example of {name} failed (see the output above)"
            names.update(test.globs)
