"""PERMANOVA per layer x distance x exposure x adjustment set on the cluster (plan ``diversity.beta``).

The statistics are the pure kernels of :mod:`scalable_assoc.stats.permanova`
(vegan ``adonis2(..., by = "margin")``), run on the workers by the functions of
:mod:`scalable_assoc.engine.diversity_tasks`; this module only lays them out as tasks::

    permanova-sums-<layer>-<i>       per-sample sum of log(x + c), values present and raw total over the block's kept features
    permanova-clr-<layer>-<i>        CLR values of block i's kept features (all samples the layer uses)
    permanova-aitchison-obs-<layer>-<i>-<designs>
                                     observed sums of squares of block i, every analysis of the layer
    permanova-aitchison-perm-<layer>-<i>-<first>-<count>-<seed>-<designs>
                                     permuted sums of block i for permutations first..first+count-1
    permanova-raw-<layer>            raw kept abundances of every sample (Bray-Curtis only)
    permanova-bray-rows-<layer>-<j>  a block of rows of the layer's Bray-Curtis matrix
    permanova-gower-<layer>-<design> the Gower-centred matrix of one analysis' participants
    permanova-bray-obs-/perm-...     observed / permuted traces of one analysis

Aitchison never forms an ``n x n`` matrix: the sums of squares of feature
blocks add up (on the client, in block order). Permutation ``i`` is drawn from
its own seed (:func:`~scalable_assoc.stats.permanova.permutation_indices`), so
results do not depend on the number of workers, the block sizes or a rerun.
Keys are hashes of their inputs (the layer token and the held designs), so the
same step in a rerun on the same cluster is computed once.

Participants of an analysis are those of its regression models (covariates and
exposure complete), without samples that miss an abundance value of a kept
feature (a distance to them is undefined; logged). Bray-Curtis also leaves out
samples whose kept abundances are all zero (logged).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import distributed
import numpy as np
import pandas as pd
import pyarrow as pa
from dask.base import tokenize
from distributed import Client

from scalable_assoc.engine.diversity_tasks import (
    HeldDesign,
    aitchison_observed,
    aitchison_permuted,
    bray_gower,
    bray_observed,
    bray_permuted,
    bray_rows,
    clr_block,
    permanova_sums,
    raw_kept,
)
from scalable_assoc.engine.filters import LayerFilter
from scalable_assoc.engine.graph import hold_on_cluster, layer_token
from scalable_assoc.engine.prepare import LayerWork, PreparedAnalysis, PreparedStudy
from scalable_assoc.engine.watch import ClusterWatch
from scalable_assoc.errors import DataError
from scalable_assoc.io.atomic import write_parquet, write_tsv
from scalable_assoc.plan.diversity import BetaSpec
from scalable_assoc.results.columns import PERMANOVA_COLUMNS, PERMANOVA_SCHEMA
from scalable_assoc.stats.permanova import (
    OBSERVED_SUMS,
    PermanovaDesign,
    distance_matrix_bytes,
    permanova_design,
    permanova_from_sums,
)

logger = logging.getLogger(__name__)

#: Output files (in the run's output folder).
PERMANOVA_FILES = ("permanova.parquet", "permanova.tsv")

#: Largest ``n x n`` float64 matrix (bytes) a Bray-Curtis PERMANOVA may form: 8 GiB, or less when the workers have
#: less memory (see :data:`BRAY_CURTIS_WORKER_FRACTION`). A layer above it is refused before anything is computed.
BRAY_CURTIS_MEMORY_LIMIT = 8 * 2**30
#: Fraction of the smallest worker memory limit one ``n x n`` matrix may take: a task holds about three
#: (the layer's matrix, an analysis' subset, its Gower centring).
BRAY_CURTIS_WORKER_FRACTION = 0.25
#: Permutations per task (fewer when the stacked permuted bases would exceed :data:`_STACK_BYTES`).
PERMUTATION_BLOCK = 200
_STACK_BYTES = 64 * 2**20
#: Bytes of Bray-Curtis rows one task computes.
_ROW_BLOCK_BYTES = 64 * 2**20


# --- client side --------------------------------------------------------------------------------------------------------


def bray_curtis_limit(client: Client) -> int:
    """Bytes one ``n x n`` matrix may take: :data:`BRAY_CURTIS_MEMORY_LIMIT`, or a fraction of the smallest worker's memory limit."""
    limits = [int(w.get("memory_limit") or 0) for w in client.scheduler_info().get("workers", {}).values()]
    limits = [limit for limit in limits if limit > 0]
    if not limits:
        return BRAY_CURTIS_MEMORY_LIMIT
    return int(min(BRAY_CURTIS_MEMORY_LIMIT, BRAY_CURTIS_WORKER_FRACTION * min(limits)))


def _gib(size: float) -> str:
    return f"{size / 2**30:.3g} GiB ({int(size)} bytes)"


def check_bray_curtis_memory(study: PreparedStudy, layers: list[LayerWork], limit: int) -> None:
    """Refuse (DataError, exit 2) a Bray-Curtis PERMANOVA whose ``n x n`` matrix would exceed ``limit`` bytes."""
    for layer in layers:
        n = int(layer.sample_positions.size)
        needed = distance_matrix_bytes(n)
        if needed > limit:
            raise DataError(
                f"plan {study.plan.source}, key 'diversity.beta.distances': PERMANOVA with bray_curtis on layer '{layer.spec.name}' "
                f"needs its {n} x {n} distance matrix, {_gib(needed)} per copy, above the limit of {_gib(limit)} "
                f"(min of {_gib(BRAY_CURTIS_MEMORY_LIMIT)} and {BRAY_CURTIS_WORKER_FRACTION:g} of a worker's memory limit); "
                "use 'aitchison' (never forms the matrix), fewer samples, or workers with more memory"
            )


@dataclass(frozen=True)
class _Analysis:
    """One exposure x adjustment set of a layer, as PERMANOVA sees it."""

    exposure: str
    adjustment: str
    rows: np.ndarray  # positions among the layer's used samples
    covariates: np.ndarray  # (len(rows), k) without the intercept
    exposure_columns: np.ndarray  # (len(rows), q)
    strata: np.ndarray | None  # (len(rows),) cluster codes when the plan names a cluster column


def _analyses(layer: LayerWork) -> list[_Analysis]:
    """The layer's distinct exposure x adjustment pairs (the models share their participants)."""
    seen: dict[tuple[str, str], PreparedAnalysis] = {}
    for a in layer.analyses:
        seen.setdefault((a.key.exposure, a.key.adjustment), a)
    out = []
    for (exposure, adjustment), a in seen.items():
        design = layer.designs[a.design_key]
        if a.levels:  # a categorical exposure: codes 0..L-1, reference 0 -> L-1 dummies
            columns = np.stack([(a.exposure == code).astype(np.float64) for code in range(1, len(a.levels))], axis=1)
        else:
            columns = np.asarray(a.exposure, dtype=np.float64)[:, None]
        strata = np.asarray(design.clusters) if design.clusters is not None else None
        out.append(_Analysis(exposure, adjustment, np.asarray(design.rows), np.asarray(design.matrix[:, 1:]), columns, strata))
    return out


def _row(layer: str, distance: str, a: _Analysis, n: int, permutations: int, **values: object) -> dict[str, object]:
    row: dict[str, object] = {c.name: None for c in PERMANOVA_COLUMNS}
    row.update(layer=layer, distance=distance, exposure=a.exposure, adjustment=a.adjustment, n=n, permutations=permutations)
    row.update(values)
    return row


def _designs(
    layer: LayerWork, distance: str, analyses: list[_Analysis], usable: np.ndarray, rows_out: list[dict[str, object]]
) -> list[tuple[_Analysis, HeldDesign]]:
    """Factorise each analysis on its usable participants; one without an estimate gets its row with a status now."""
    ready = []
    position = np.full(usable.size, -1, dtype=np.int64)
    position[np.flatnonzero(usable)] = np.arange(int(usable.sum()))
    for a in analyses:
        keep = usable[a.rows]
        try:
            design = permanova_design(a.covariates[keep], a.exposure_columns[keep])
        except ValueError as error:
            rows_out.append(_row(layer.spec.name, distance, a, int(keep.sum()), 0, status=f"no estimate: {error}"))
            continue
        # Aitchison tasks index the layer's samples, Bray-Curtis tasks the usable ones.
        rows = a.rows[keep] if distance == "aitchison" else position[a.rows[keep]]
        ready.append((a, HeldDesign(rows, design, a.strata[keep] if a.strata is not None else None)))
    return ready


def _result_row(layer: str, distance: str, a: _Analysis, design: PermanovaDesign, observed: np.ndarray, permuted: np.ndarray) -> dict:
    result = permanova_from_sums(design, observed, permuted)
    return _row(
        layer,
        distance,
        a,
        result.n,
        result.permutations,
        df=result.df,
        sum_of_squares=result.sum_of_squares,
        r2=result.r2,
        f=result.f,
        p=result.p,
        status="ok",
    )


def _permutation_blocks(designs: list[HeldDesign], permutations: int) -> list[tuple[int, int]]:
    """``(first, count)`` of each permutation block: at most :data:`PERMUTATION_BLOCK`, fewer when the stacked bases are large."""
    widest = max((8 * d.design.n * (d.design.df + d.design.covariate_rank) for d in designs), default=1)
    size = max(1, min(PERMUTATION_BLOCK, _STACK_BYTES // max(widest, 1)))
    return [(first, min(size, permutations - first)) for first in range(0, permutations, size)]


def _aitchison(
    client: Client,
    watch: ClusterWatch,
    layer: LayerWork,
    layer_filter: LayerFilter,
    token: str,
    positions: distributed.Future,
    log_means: np.ndarray,
    ready: list[tuple[_Analysis, HeldDesign]],
    beta: BetaSpec,
) -> list[dict]:
    designs = [d for _, d in ready]
    held = hold_on_cluster(client, designs, "permanova-designs")
    means = hold_on_cluster(client, log_means, "permanova-log-means")
    blocks = _permutation_blocks(designs, beta.permutations)
    observed: dict[int, list[distributed.Future]] = {}
    permuted: dict[tuple[int, int], list[distributed.Future]] = {}
    store = layer.store
    for i, (start, stop) in enumerate(store.block_bounds()):
        kept = layer_filter.kept[i]
        if not kept.any():
            continue
        clr = client.submit(
            clr_block,
            store.path,
            start,
            stop,
            positions,
            kept,
            layer_filter.pseudocount,
            means,
            key=f"permanova-clr-{token}-{i}-{means.key}",
        )
        observed.setdefault(0, []).append(
            client.submit(aitchison_observed, clr, held, key=f"permanova-aitchison-obs-{token}-{i}-{held.key}")
        )
        for first, count in blocks:
            permuted.setdefault((first, count), []).append(
                client.submit(
                    aitchison_permuted,
                    clr,
                    held,
                    beta.seed,
                    first,
                    count,
                    key=f"permanova-aitchison-perm-{token}-{i}-{first}-{count}-{beta.seed}-{held.key}",
                )
            )
    got_observed = watch.gather(observed)
    got_permuted = watch.gather({str(k): v for k, v in permuted.items()})
    rows = []
    for index, (a, d) in enumerate(ready):
        obs = np.sum([part[index] for part in got_observed.get(0, [])], axis=0) if got_observed else np.zeros(len(OBSERVED_SUMS))
        perm = np.concatenate(
            [np.sum([part[index] for part in got_permuted[str((first, count))]], axis=0) for first, count in blocks], axis=0
        )
        rows.append(_result_row(layer.spec.name, "aitchison", a, d.design, obs, perm))
    return rows


def _bray_curtis(
    client: Client,
    watch: ClusterWatch,
    layer: LayerWork,
    layer_filter: LayerFilter,
    token: str,
    positions: distributed.Future,
    usable: np.ndarray,
    ready: list[tuple[_Analysis, HeldDesign]],
    beta: BetaSpec,
) -> list[dict]:
    store = layer.store
    raw = client.submit(
        raw_kept, store.path, store.block_bounds(), positions, layer_filter.kept, key=f"permanova-raw-{token}-{layer_filter.n_kept}"
    )
    held_usable = hold_on_cluster(client, usable, "permanova-usable")
    n = int(usable.sum())
    step = max(1, _ROW_BLOCK_BYTES // (8 * max(n, 1)))
    row_blocks = [
        client.submit(
            bray_rows, raw, held_usable, start, min(start + step, n), key=f"permanova-bray-rows-{token}-{held_usable.key}-{start}"
        )
        for start in range(0, n, step)
    ]
    futures: dict[str, list[distributed.Future]] = {}
    for index, (_, d) in enumerate(ready):
        name = tokenize(d.rows, d.design.bases, d.strata)
        gower = client.submit(bray_gower, row_blocks, d.rows, key=f"permanova-gower-{token}-{held_usable.key}-{name}")
        design = hold_on_cluster(client, d.design, "permanova-design")
        futures[f"obs-{index}"] = [client.submit(bray_observed, gower, design, key=f"permanova-bray-obs-{token}-{name}")]
        futures[f"perm-{index}"] = [
            client.submit(
                bray_permuted,
                gower,
                design,
                beta.seed,
                first,
                count,
                d.strata,
                key=f"permanova-bray-perm-{token}-{name}-{first}-{count}-{beta.seed}",
            )
            for first, count in _permutation_blocks([d], beta.permutations)
        ]
    got = watch.gather(futures)
    return [
        _result_row(layer.spec.name, "bray_curtis", a, d.design, got[f"obs-{index}"][0], np.concatenate(got[f"perm-{index}"], axis=0))
        for index, (a, d) in enumerate(ready)
    ]


def _sample_sums(
    client: Client, watch: ClusterWatch, layer: LayerWork, layer_filter: LayerFilter, token: str, positions: distributed.Future
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    futures = {
        "sums": [
            client.submit(
                permanova_sums, layer.store.path, start, stop, positions, kept, layer_filter.pseudocount, key=f"permanova-sums-{token}-{i}"
            )
            for i, ((start, stop), kept) in enumerate(zip(layer.store.block_bounds(), layer_filter.kept, strict=True))
            if kept.any()
        ]
    }
    parts = watch.gather(futures)["sums"]
    return tuple(np.sum([p[k] for p in parts], axis=0) for k in range(3))  # type: ignore[return-value]


def _asked(study: PreparedStudy) -> tuple[BetaSpec | None, list[LayerWork]]:
    """The plan's PERMANOVA settings (None: none asked for) and the layers they cover."""
    spec = study.plan.diversity
    if spec is None or spec.beta is None:
        return None, []
    covered = spec.layers_of(tuple(layer.spec.name for layer in study.layers))
    return spec.beta, [layer for layer in study.layers if layer.spec.name in covered]


def check_permanova(client: Client, study: PreparedStudy) -> None:
    """Refuse (DataError) what :func:`run_permanova` could not compute, before any task of the run: a Bray-Curtis matrix above the limit."""
    beta, layers = _asked(study)
    if beta is not None and "bray_curtis" in beta.distances:
        check_bray_curtis_memory(study, layers, bray_curtis_limit(client))


def run_permanova(
    client: Client,
    watch: ClusterWatch,
    study: PreparedStudy,
    filters: dict[str, LayerFilter],
    positions: dict[str, distributed.Future],
    out: Path,
) -> dict[str, object] | None:
    """PERMANOVA of every layer x distance x exposure x adjustment set the plan's ``diversity.beta`` asks for.

    Writes ``permanova.parquet`` and ``permanova.tsv`` to ``out`` (atomically) and returns the
    manifest's ``permanova`` entry; None (and no file) when the plan asks for no PERMANOVA.

    Raises
    ------
    DataError
        A Bray-Curtis matrix above the memory limit (:func:`bray_curtis_limit`), before anything is computed.
    """
    for name in PERMANOVA_FILES:
        (out / name).unlink(missing_ok=True)
    beta, layers = _asked(study)
    if beta is None:
        return None
    check_permanova(client, study)
    rows: list[dict[str, object]] = []
    for layer in layers:
        layer_filter = filters[layer.spec.name]
        token = layer_token(study, layer)
        log_sums, present, totals = _sample_sums(client, watch, layer, layer_filter, token, positions[layer.spec.name])
        complete = present == layer_filter.n_kept
        if not complete.all():
            logger.info(
                "  PERMANOVA, layer '%s': %d sample(s) miss an abundance value of a kept feature and are left out (distances undefined)",
                layer.spec.name,
                int((~complete).sum()),
            )
        analyses = _analyses(layer)
        for distance in beta.distances:
            if distance == "aitchison":
                use_filter = layer.spec.preprocess.transform == "clr" and layer_filter.sample_totals is not None
                # The CLR denominator the feature fits use (feature list, clr_reference), else the mean over the kept features.
                total, count = layer_filter.sample_totals if use_filter else (log_sums, present)  # type: ignore[misc]
                with np.errstate(invalid="ignore", divide="ignore"):
                    log_means = np.asarray(total, dtype=np.float64) / np.asarray(count, dtype=np.float64)
                usable = complete & np.isfinite(log_means)
            else:
                usable = complete & (totals > 0)
                zero = int((complete & ~(totals > 0)).sum())
                if zero:
                    logger.info(
                        "  PERMANOVA, layer '%s': %d sample(s) have no abundance in the kept features; left out of Bray-Curtis (undefined)",
                        layer.spec.name,
                        zero,
                    )
            ready = _designs(layer, distance, analyses, usable, rows)
            if not ready:
                continue
            logger.info(
                "  PERMANOVA, layer '%s', %s: %d analyses x %d permutations", layer.spec.name, distance, len(ready), beta.permutations
            )
            position = positions[layer.spec.name]
            if distance == "aitchison":
                rows += _aitchison(client, watch, layer, layer_filter, token, position, np.where(usable, log_means, 0.0), ready, beta)
            else:
                rows += _bray_curtis(client, watch, layer, layer_filter, token, position, usable, ready, beta)
    order = {(a, b, c, d): i for i, (a, b, c, d) in enumerate(_order(layers, beta))}
    rows.sort(key=lambda r: order.get((str(r["layer"]), str(r["distance"]), str(r["exposure"]), str(r["adjustment"])), len(order)))
    frame = pd.DataFrame(rows, columns=[c.name for c in PERMANOVA_COLUMNS])
    frame["permuted_within"] = study.plan.cluster
    table = _to_table(frame)
    write_parquet(out / PERMANOVA_FILES[0], table)
    write_tsv(out / PERMANOVA_FILES[1], table.to_pandas())
    return {
        "file": PERMANOVA_FILES[0],
        "rows": len(frame),
        "permutations": beta.permutations,
        "seed": beta.seed,
        "distances": list(beta.distances),
        "permuted_within": study.plan.cluster,
    }


def _order(layers: list[LayerWork], beta: BetaSpec) -> list[tuple[str, str, str, str]]:
    """Rows in plan order: layer, distance, then the analyses' order."""
    return [
        (layer.spec.name, distance, a.exposure, a.adjustment) for layer in layers for distance in beta.distances for a in _analyses(layer)
    ]


def _to_table(frame: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(frame, schema=PERMANOVA_SCHEMA, preserve_index=False)
