"""The direction of imports, and the README's column table (lint and types run before the suite: see .ci/run).

Kernels (models/, stats/) stay pure numpy/scipy; only engine/ imports Dask.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "scalable_assoc"

#: package -> top-level modules it must never import
FORBIDDEN = {
    "models": {"dask", "distributed", "zarr", "pyarrow", "pandas", "yaml"},
    "stats": {"dask", "distributed", "zarr", "pyarrow", "pandas", "yaml"},
    "plan": {"dask", "distributed", "zarr", "pyarrow", "pandas", "numpy"},
    "io": {"dask", "distributed"},
    "results": {"dask", "distributed"},
    "report": {"dask", "distributed"},
    # The simulator writes plain tables with numpy/pandas; it never needs the engine's stores.
    "simulate": {"dask", "distributed", "zarr", "pyarrow"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_flow_one_way(package: str) -> None:
    for path in sorted((PACKAGE / package).rglob("*.py")):
        bad = _imports(path) & FORBIDDEN[package]
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_only_the_engine_imports_dask() -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        if "engine" in path.relative_to(PACKAGE).parts:
            continue
        assert not _imports(path) & {"dask", "distributed"}, f"{path.relative_to(ROOT)} imports Dask outside the engine"


def test_readme_documents_every_result_column() -> None:
    from scalable_assoc.results.columns import column_reference_markdown

    assert column_reference_markdown() in (ROOT / "README.md").read_text(encoding="utf-8"), (
        "README's results column table differs from scalable_assoc/results/columns.py; paste column_reference_markdown()"
    )
