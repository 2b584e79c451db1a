"""A store's checksum (io.store.store_checksum): its metadata whole, its chunks by their stored CRC-32C."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from scalable_assoc.io.store import SAMPLE_SUMS_KEY, store_checksum, write_store_blocks


def _store(path, values: np.ndarray, samples: list[str] | None = None):
    n, m = values.shape
    ids = samples or [f"S{i}" for i in range(n)]
    return write_store_blocks(path, ids, [f"F{j}" for j in range(m)], lambda a, b: values[:, a:b], "t", "x", 3)


def test_store_checksum_follows_values_and_ids_not_the_folder(tmp_path):
    values = np.random.default_rng(0).exponential(size=(12, 7))
    values[values < 0.5] = 0.0
    _store(tmp_path / "a.zarr", values)
    _store(tmp_path / "b.zarr", values)
    assert store_checksum(tmp_path / "a.zarr") == store_checksum(tmp_path / "b.zarr")
    changed = values.copy()
    changed[4, 5] += 1e-12  # one value, in its last bits
    _store(tmp_path / "c.zarr", changed)
    assert store_checksum(tmp_path / "c.zarr") != store_checksum(tmp_path / "a.zarr")
    _store(tmp_path / "d.zarr", values, [f"T{i}" for i in range(12)])
    assert store_checksum(tmp_path / "d.zarr") != store_checksum(tmp_path / "a.zarr")


def test_store_checksum_hashes_whole_files_of_arrays_without_crc32c(tmp_path):
    values = np.ones((4, 3))
    _store(tmp_path / "a.zarr", values)
    before = store_checksum(tmp_path / "a.zarr")
    # an array written by another tool, without per-chunk checksums: a changed value must change the checksum
    extra = zarr.create_array(tmp_path / "a.zarr" / "extra", shape=(4,), chunks=(4,), dtype="float64", compressors=None)
    extra[:] = 1.0
    first = store_checksum(tmp_path / "a.zarr")
    extra[0] = 2.0  # same size, no CRC at its end
    assert len({before, first, store_checksum(tmp_path / "a.zarr")}) == 3


@pytest.mark.parametrize("level", [3, -1])
def test_a_store_written_with_zstd_reads_the_same(tmp_path, level):
    """Stores converted before the abundance chunks' codec changed (zstd at level 3, then -1) read the same values."""
    from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

    from scalable_assoc.io.store import ABUNDANCE_COMPRESSOR, open_store

    values = np.random.default_rng(1).exponential(size=(12, 7))
    values[values < 0.5] = 0.0
    store = _store(tmp_path / "a.zarr", values)
    codecs = zarr.open_array(store.path / "abundance", mode="r").metadata.codecs
    assert [codec for codec in codecs if isinstance(codec, BloscCodec)] == [ABUNDANCE_COMPRESSOR]
    assert ABUNDANCE_COMPRESSOR.shuffle.value == "noshuffle" and isinstance(codecs[-1], Crc32cCodec)
    group = zarr.open_group(store.path, mode="r+")
    group.create_array(
        "abundance", data=values, chunks=(12, 3), fill_value=np.nan, compressors=[ZstdCodec(level=level), Crc32cCodec()], overwrite=True
    )
    older = open_store(store.path)
    assert [c.level for c in zarr.open_array(store.path / "abundance", mode="r").metadata.codecs if isinstance(c, ZstdCodec)] == [level]
    np.testing.assert_array_equal(older.read_block(0, 7), values)
    np.testing.assert_array_equal(older.read_block(3, 6, np.array([1, 4, 9])), values[[1, 4, 9], 3:6])


def test_a_store_writes_its_attributes_in_one_go(tmp_path, monkeypatch):
    """zarr rewrites the group's zarr.json whole (every sample ID) for each key given to attrs.update: the store's
    attributes are encoded once, at the end, beside the group's creation (without attributes) by zarr."""
    import scalable_assoc.io.side_arrays as side_arrays

    writes, encoded = [], []
    original, original_metadata = zarr.storage.LocalStore.set, side_arrays.group_metadata

    async def counted(self, key, value, *args, **kwargs):
        if key == "zarr.json":
            writes.append(len(value.to_bytes()))
        return await original(self, key, value, *args, **kwargs)

    def counted_metadata(attributes):
        encoded.append(sorted(attributes))
        return original_metadata(attributes)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", counted)
    monkeypatch.setattr(side_arrays, "group_metadata", counted_metadata)
    store = _store(tmp_path / "s.zarr", np.arange(12.0).reshape(4, 3))
    assert len(writes) == 1 and len(encoded) == 1, (writes, encoded)
    assert "sample_ids" in encoded[0] and SAMPLE_SUMS_KEY in encoded[0]
    assert store.sample_ids == ("S0", "S1", "S2", "S3") and SAMPLE_SUMS_KEY in zarr.open_group(store.path, mode="r").attrs


def _chunks(store) -> list:
    return sorted(p for p in (store / "abundance").rglob("*") if p.is_file() and p.name != "zarr.json")


def _damaged(tmp_path, name: str, damage) -> bool | None:
    """``store_sealed`` of a store sealed by ``seal_store`` and then changed by ``damage(store)``."""
    from scalable_assoc.io.store import seal_store, store_sealed

    values = np.random.default_rng(2).exponential(size=(12, 7))
    values[values < 0.5] = 0.0
    store = tmp_path / f"{name}.zarr"
    _store(store, values)
    seal_store(store)
    assert store_sealed(store) is True
    damage(store)
    return store_sealed(store)


def _flip(file, position: int) -> None:
    data = bytearray(file.read_bytes())
    data[position] ^= 0x01
    file.write_bytes(bytes(data))


def _flip_with_its_crc(file) -> None:
    """A value changed and the chunk's CRC-32C made to match it again: a chunk Zarr would read without complaint."""
    import google_crc32c

    data = bytearray(file.read_bytes()[:-4])
    data[len(data) // 2] ^= 0x01
    file.write_bytes(bytes(data) + google_crc32c.value(bytes(data)).to_bytes(4, "little"))


def _rotate_ids(store) -> None:
    import json

    meta = store / "zarr.json"
    content = json.loads(meta.read_text())
    ids = content["attributes"]["sample_ids"]
    content["attributes"]["sample_ids"] = ids[1:] + ids[:1]
    meta.write_text(json.dumps(content))


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda store: _flip(_chunks(store)[0], 10), id="a byte of a chunk"),
        pytest.param(lambda store: _flip(_chunks(store)[-1], -1), id="a byte of a chunk's CRC-32C"),
        pytest.param(lambda store: _flip_with_its_crc(_chunks(store)[1]), id="a chunk and its CRC-32C"),
        pytest.param(lambda store: _chunks(store)[0].unlink(), id="a chunk removed"),
        pytest.param(lambda store: _chunks(store)[0].write_bytes(b"\x00\x01"), id="a chunk cut short"),
        pytest.param(_rotate_ids, id="sample IDs rotated"),
    ],
)
def test_a_sealed_store_changed_after_its_seal_is_not_sealed(tmp_path, damage):
    """The seal (store_checksum, each chunk's CRC-32C checked against its bytes) finds whatever the SHA-256 of every byte found."""
    assert _damaged(tmp_path, "s", damage) is False


def test_a_store_sealed_with_the_sha256_of_every_byte_is_still_checked(tmp_path):
    """Stores converted before the CRC-32C seal keep their seal: reused while unchanged, rebuilt once changed."""
    from scalable_assoc.io.atomic import seal
    from scalable_assoc.io.store import store_sealed

    store = tmp_path / "old.zarr"
    _store(store, np.ones((5, 4)))
    assert store_sealed(store) is False  # no seal yet
    seal(store)
    assert store_sealed(store) is True
    _flip(_chunks(store)[0], 3)
    assert store_sealed(store) is False
    assert store_sealed(tmp_path / "absent.zarr") is None
