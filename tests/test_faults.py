"""Damaged caches and stores: what a run does when the bytes on disk are not those written.

- A converted store (a cache of the run) that no longer matches its seal, by a
  flipped byte in a chunk or by edited attributes (rotated sample IDs, which no
  zarr checksum covers), is rebuilt from its table with a warning; the results
  equal those of the undamaged run.
- A store the user gave directly cannot be rebuilt: a damaged chunk is exit 2
  naming the store and the features of the chunk.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from distributed import Client

from scalable_assoc.cli import main
from scalable_assoc.engine.run import WORK_DIR, run_study
from scalable_assoc.simulate import SimulatedStudy
from scalable_assoc.testing import logged_messages, write_plan


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _rotate_sample_ids(store: Path) -> None:
    meta = store / "zarr.json"
    content = json.loads(meta.read_text())
    ids = content["attributes"]["sample_ids"]
    content["attributes"]["sample_ids"] = ids[1:] + ids[:1]
    meta.write_text(json.dumps(content))


@pytest.mark.parametrize("damage", ["flipped byte", "rotated sample IDs"])
def test_a_damaged_converted_store_is_rebuilt_from_its_table(
    small_study: SimulatedStudy, client: Client, tmp_path: Path, damage: str, assert_results_equal
) -> None:
    out = tmp_path / "out"
    run_study(small_study.plan_path, out, client=client, chunk_features=16)
    complete = tmp_path / "complete.parquet"
    complete.write_bytes((out / "results.parquet").read_bytes())
    store = next((out / WORK_DIR / "stores").glob("gbm-*.zarr"))
    if damage == "flipped byte":
        _flip_a_byte(sorted(p for p in (store / "abundance").rglob("*") if p.is_file() and p.name != "zarr.json")[0])
    else:
        _rotate_sample_ids(store)
    with logged_messages() as messages:
        run_study(small_study.plan_path, out, client=client, chunk_features=16, force=True)  # the outputs are complete: only --force reruns
    assert any("layer 'gbm'" in m and "rebuilding it from" in m for m in messages), messages
    assert_results_equal(complete, out, relative=0.0)


def test_a_damaged_store_given_directly_exits_2_naming_it(
    small_study: SimulatedStudy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "study"
    folder.mkdir()
    for name in ("metadata.tsv", "species.tsv", "pathways.tsv"):
        (folder / name).symlink_to(small_study.out_dir / name)
    assert main(["ingest", str(small_study.out_dir / "gbm.tsv"), "--out", str(folder / "gbm.zarr"), "--chunk-features", "16"]) == 0
    write_plan(folder, small_study.plan_path.read_text().replace("gbm: gbm.tsv", "gbm: gbm.zarr"))
    chunk = sorted(p for p in (folder / "gbm.zarr" / "abundance").rglob("*") if p.is_file() and p.name != "zarr.json")[1]
    _flip_a_byte(chunk)
    capsys.readouterr()
    code = main(["run", str(folder / "plan.yaml"), "--out", str(tmp_path / "out"), "--workers", "1", "--allow-outside-paths"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and f"store {folder / 'gbm.zarr'} is damaged" in err and "features 16-31" in err
    assert not (tmp_path / "out" / "results.parquet").exists()
