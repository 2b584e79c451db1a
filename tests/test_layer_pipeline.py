"""A run sends each layer to the cluster as soon as its table is converted (engine/prepare.py StudyPreparation, engine/run.py)."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pandas as pd
import pytest
from distributed import Client

from scalable_assoc.engine import prepare
from scalable_assoc.engine.run import WORK_DIR, run_study
from scalable_assoc.io.ingest import ingest_table
from scalable_assoc.plan.schema import LayerSpec, load_plan
from scalable_assoc.simulate import SimulatedStudy


def test_a_layer_is_fitted_while_another_table_still_converts(
    small_study: SimulatedStudy, client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, assert_results_equal: Callable
) -> None:
    expected = run_study(small_study.plan_path, tmp_path / "at_once", client=client)
    out = tmp_path / "streamed"
    chunks = out / WORK_DIR / "chunks"
    seen: dict[str, bool] = {}
    real = prepare._open_layer_store

    def pathways_after_a_fit(spec: LayerSpec, cache_dir: Path, chunk_features: int | None) -> tuple:
        if spec.name == "pathways":  # its table "converts" until another layer's first chunk is written
            fitted = threading.Event()
            for _ in range(600):
                if any(chunks.glob("*.parquet")):
                    fitted.set()
                    break
                fitted.wait(0.05)
            seen["fit before pathways opened"] = fitted.is_set()
        return real(spec, cache_dir, chunk_features)

    monkeypatch.setattr(prepare, "_open_layer_store", pathways_after_a_fit)
    streamed = run_study(small_study.plan_path, out, client=client)
    assert seen == {"fit before pathways opened": True}
    # The same rows, manifest layers and warnings in plan order, whichever table was ready first.
    assert_results_equal(pd.read_parquet(tmp_path / "at_once" / "results.parquet"), pd.read_parquet(out / "results.parquet"))
    assert list(streamed.manifest["layers"]) == list(expected.manifest["layers"]) == ["species", "pathways", "gbm"]
    assert streamed.manifest["warnings"] == expected.manifest["warnings"]
    assert streamed.chunks_total == expected.chunks_total


def test_layers_linked_by_a_clr_reference_are_prepared_together() -> None:
    def spec(name: str, reference: str | None = None) -> LayerSpec:
        return cast(LayerSpec, SimpleNamespace(name=name, preprocess=SimpleNamespace(clr_reference=reference)))

    layers = [spec("species"), spec("pathways", "species"), spec("gbm"), spec("modules", "gbm"), spec("virus")]
    assert prepare._clr_groups(layers) == [{"species", "pathways"}, {"gbm", "modules"}, {"virus"}]


def test_a_bad_table_converted_first_is_still_named_after_an_earlier_layer_s_error(
    small_study: SimulatedStudy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Errors come in plan order, whichever thread meets its table's error first."""
    real = prepare._open_layer_store
    plan = load_plan(small_study.plan_path)

    def failing(spec: LayerSpec, cache_dir: Path, chunk_features: int | None) -> tuple:
        if spec.name == "species":
            threading.Event().wait(0.5)  # the later layers' errors come in first
        if spec.name in ("species", "gbm"):
            raise ValueError(f"bad table of layer {spec.name}")
        return real(spec, cache_dir, chunk_features)

    monkeypatch.setattr(prepare, "_open_layer_store", failing)
    with pytest.raises(ValueError, match="layer species"):
        prepare.prepare_study(plan, tmp_path / "stores")


def test_the_second_thread_converts_its_smallest_table_first(
    small_study: SimulatedStudy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The largest file in one thread; the others smallest first, so the first layer to reach the cluster is the quickest."""
    plan = load_plan(_gbm_before_pathways(small_study, tmp_path))
    sizes = {spec.name: spec.path.stat().st_size for spec in plan.layers}
    largest = max(sizes, key=lambda name: sizes[name])
    others = sorted((name for name in sizes if name != largest), key=lambda name: sizes[name])
    assert [spec.name for spec in plan.layers if spec.name != largest] != others  # plan order is not size order here
    order = _record_opening_threads(monkeypatch)
    prepared = prepare.prepare_study(plan, tmp_path / "stores")
    assert order == {"scalable-assoc-convert-largest": [largest], "scalable-assoc-convert": others}
    assert [layer.spec.name for layer in prepared.layers] == [spec.name for spec in plan.layers]  # handed over in plan order


def test_after_an_error_a_thread_still_opens_the_layers_before_it_in_plan_order(
    small_study: SimulatedStudy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pathways (smaller) converts before gbm (earlier in the plan): its error waits for gbm's, which is raised."""
    plan = load_plan(_gbm_before_pathways(small_study, tmp_path))
    real = prepare._open_layer_store
    opened: list[str] = []

    def failing(spec: LayerSpec, cache_dir: Path, chunk_features: int | None) -> tuple:
        opened.append(spec.name)
        if spec.name in ("pathways", "gbm"):
            raise ValueError(f"bad table of layer {spec.name}")
        return real(spec, cache_dir, chunk_features)

    monkeypatch.setattr(prepare, "_open_layer_store", failing)
    with pytest.raises(ValueError, match="layer gbm"):
        prepare.prepare_study(plan, tmp_path / "stores")
    assert sorted(opened) == ["gbm", "pathways", "species"]


def test_a_layer_given_as_a_store_is_opened_beside_two_tables(
    small_study: SimulatedStudy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two table files and a converted store: the store's layer is opened (first, in the second thread) and prepared."""
    study = tmp_path / "study"
    study.mkdir()
    for name in ("metadata.tsv", "species.tsv", "pathways.tsv"):
        shutil.copyfile(small_study.plan_path.parent / name, study / name)
    ingest_table(small_study.plan_path.parent / "gbm.tsv", study / "gbm.zarr")
    (study / "plan.yaml").write_text(small_study.plan_path.read_text().replace("gbm: gbm.tsv", "gbm: gbm.zarr"))
    order = _record_opening_threads(monkeypatch)
    prepared = prepare.prepare_study(load_plan(study / "plan.yaml"), tmp_path / "stores")
    assert [layer.spec.name for layer in prepared.layers] == ["species", "pathways", "gbm"]
    assert order == {"scalable-assoc-convert-largest": ["species"], "scalable-assoc-convert": ["gbm", "pathways"]}


def _gbm_before_pathways(small_study: SimulatedStudy, folder: Path) -> Path:
    """A copy of the small study whose plan lists gbm before the smaller pathways table (plan order is not size order)."""
    study = folder / "study"
    study.mkdir()
    for name in ("metadata.tsv", "species.tsv", "pathways.tsv", "gbm.tsv"):
        shutil.copyfile(small_study.plan_path.parent / name, study / name)
    text = small_study.plan_path.read_text()
    swapped = "    gbm: gbm.tsv\n    pathways: pathways.tsv\n"
    (study / "plan.yaml").write_text(text.replace("    pathways: pathways.tsv\n    gbm: gbm.tsv\n", swapped))
    assert (study / "pathways.tsv").stat().st_size < (study / "gbm.tsv").stat().st_size < (study / "species.tsv").stat().st_size
    return study / "plan.yaml"


def _record_opening_threads(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Thread name -> the layers it opened, in order (filled as ``prepare`` opens them)."""
    real = prepare._open_layer_store
    order: dict[str, list[str]] = {}

    def recorded(spec: LayerSpec, cache_dir: Path, chunk_features: int | None) -> tuple:
        order.setdefault(threading.current_thread().name, []).append(spec.name)
        return real(spec, cache_dir, chunk_features)

    monkeypatch.setattr(prepare, "_open_layer_store", recorded)
    return order
