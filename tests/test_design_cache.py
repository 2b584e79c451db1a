"""Fit tasks factorise their designs from the design files, once per worker process."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import cast

import numpy as np
import pytest
from distributed import Client

from scalable_assoc.engine.graph import DesignFiles
from scalable_assoc.engine.prepare import DesignInput, LayerWork
from scalable_assoc.engine.run import run_study
from scalable_assoc.engine.tasks import DesignCache, factorise
from scalable_assoc.simulate import SimulatedStudy


def _design(key: str, n: int, seed: int) -> DesignInput:
    rng = np.random.default_rng(seed)
    matrix = np.column_stack([np.ones(n), rng.normal(size=(n, 2))])
    return DesignInput(key, np.arange(n), matrix, ("(intercept)", "a", "b"))


def _files(tmp_path: Path, designs: list[DesignInput]) -> list[Path]:
    files = DesignFiles(tmp_path / "designs")
    layer = cast(LayerWork, SimpleNamespace(designs={d.key: d for d in designs}))
    return [files.get(layer, d.key) for d in designs]


def test_a_design_is_factorised_once_per_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _files(tmp_path, [_design("d1", 50, 1)])[0]
    calls: list[Path] = []

    def counted(file: Path):  # noqa: ANN202 (factorise's own result)
        calls.append(file)
        return factorise(file)

    monkeypatch.setattr("scalable_assoc.engine.tasks.factorise", counted)
    cache = DesignCache()
    first = cache.get(path)
    assert cache.get(path) is first and calls == [path]
    expected = factorise(path)
    assert first.key == "d1" and np.array_equal(first.rows, expected.rows)
    assert np.array_equal(first.design.q, expected.design.q) and first.design.rank == expected.design.rank


def test_the_least_recently_used_designs_are_dropped_beyond_the_limit(tmp_path: Path) -> None:
    paths = _files(tmp_path, [_design(f"d{i}", 400, i) for i in range(3)])
    one = factorise(paths[0]).__sizeof__()
    cache = DesignCache(max_bytes=2 * one + one // 2)  # room for two
    first = cache.get(paths[0])
    cache.get(paths[1])
    assert cache.get(paths[0]) is first  # now the most recently used
    cache.get(paths[2])  # drops d1, the least recently used
    assert len(cache) == 2
    assert cache.get(paths[0]) is first
    assert cache.get(paths[1]) is not None and len(cache) == 2


def test_a_design_larger_than_the_limit_is_still_served(tmp_path: Path) -> None:
    path = _files(tmp_path, [_design("big", 400, 3)])[0]
    cache = DesignCache(max_bytes=1)
    assert cache.get(path).key == "big" and len(cache) == 1


def test_a_cluster_that_outlives_a_run_keeps_none_of_its_designs(
    small_study: SimulatedStudy, client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session cluster is given to the run: its workers factorise the designs, and drop them once the fits are done."""

    def designs_held() -> int:  # run on each worker
        from scalable_assoc.engine.tasks import WORKER_DESIGNS

        return len(WORKER_DESIGNS)

    def forget() -> None:  # run on each worker
        from scalable_assoc.engine.tasks import forget_designs

        forget_designs()

    monkeypatch.setattr("scalable_assoc.engine.run.forget_designs", lambda: None)
    run_study(small_study.plan_path, tmp_path / "kept", client=client)
    assert sum(client.run(designs_held).values()) > 0  # factorised in the workers, kept for their next fits
    monkeypatch.undo()
    client.run(forget)
    run_study(small_study.plan_path, tmp_path / "dropped", client=client)
    assert client.run(designs_held) == dict.fromkeys(client.nthreads(), 0)
