"""A streaming writer of large simulated abundance stores, for the scaling cases of suite.py.

``scalable_assoc.io.store.write_store`` takes a whole table in memory; at 100,000
features x 7,656 participants that is 6 GB. This writer generates the values one
chunk at a time (each chunk from its own seeded generator, so a store is the same
whatever the order of writing) and hands them to the package's
``write_store_blocks``, which writes the same layout as ``write_store`` one chunk at
a time. A plan layer may point at the store directly.

Values: feature j is present in a sample with probability p_j ~ U(0.08, 0.95);
where present, its relative abundance is exp(N(mu_j, 1.5)), mu_j ~ N(0, 1.5).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from scalable_assoc.io.store import (
    ABUNDANCE_COMPRESSOR,
    SAMPLE_SUMS_KEY,
    AbundanceStore,
    default_chunk_features,
    open_store,
    write_store_blocks,
)


def simulated_chunk(seed: int, start: int, n_samples: int, n_features: int) -> np.ndarray:
    """Features ``start:start + n_features`` of the simulated table, ``(n_samples, n_features)``."""
    rng = np.random.default_rng([seed, start])
    prevalence = rng.uniform(0.08, 0.95, size=n_features)
    mu = rng.normal(0.0, 1.5, size=n_features)
    values = rng.standard_normal((n_samples, n_features))
    values *= 1.5
    values += mu
    np.exp(values, out=values)
    values[rng.random((n_samples, n_features)) >= prevalence] = 0.0
    return values


def _written_as_now(path: Path) -> bool:
    """Whether the store's abundance chunks are compressed, and its sums kept, as the package writes them now (a
    store from an older version is written again, so the scaling cases time what a user's conversion makes)."""
    metadata = path / "abundance" / "zarr.json"
    if not metadata.is_file() or SAMPLE_SUMS_KEY not in json.loads((path / "zarr.json").read_text()).get("attributes", {}):
        return False
    codecs = json.loads(metadata.read_text()).get("codecs", [])
    return ABUNDANCE_COMPRESSOR.to_dict() in codecs and not any(codec.get("name") == "zstd" for codec in codecs)


def write_simulated_store(
    path: Path, sample_ids: list[str], n_features: int, seed: int = 0, chunk_features: int | None = None
) -> AbundanceStore:
    """Write (or reuse, if one with the same parameters exists) a simulated store at ``path``."""
    n_samples = len(sample_ids)
    chunk = default_chunk_features(n_samples, n_features, chunk_features)
    source = f"simulated:seed={seed}:samples={n_samples}:features={n_features}"
    if (path / "zarr.json").is_file():
        attrs = json.loads((path / "zarr.json").read_text()).get("attributes", {})
        if attrs.get("source") == source and attrs.get("sample_ids") == list(sample_ids) and _written_as_now(path):
            return open_store(path)
        shutil.rmtree(path)

    return write_store_blocks(
        path,
        sample_ids,
        [f"F{j:06d}" for j in range(n_features)],
        lambda start, stop: simulated_chunk(seed, start, n_samples, stop - start),
        source,
        hashlib.sha256(source.encode()).hexdigest(),
        chunk,
    )
