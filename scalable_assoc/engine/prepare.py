"""From a plan and its inputs to the work: layers, analyses, shared designs, task batches.

Everything here runs on the client before any task is submitted, so every
input error is found before a single chunk is computed.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from scalable_assoc.engine.clusters import cluster_codes, few_cluster_warnings, label_warnings
from scalable_assoc.engine.designs import DesignInput, PreparedAnalysis, read_design, write_design  # noqa: F401  # re-exported
from scalable_assoc.errors import DataError, PlanError
from scalable_assoc.io.atomic import file_checksum
from scalable_assoc.io.feature_list import FeatureList, LayerFeatureList, match_feature_list, read_feature_list
from scalable_assoc.io.ingest import layer_store
from scalable_assoc.io.metadata import (
    CovariateValues,
    ExposureValues,
    check_covariates,
    complete_rows,
    constant_covariates,
    covariate_columns,
    exposure_values,
    load_metadata,
    reconcile_samples,
    reference_levels,
)
from scalable_assoc.io.run_cache import samples_digest
from scalable_assoc.io.store import AbundanceStore
from scalable_assoc.plan.expand import AnalysisKey, expand_analyses
from scalable_assoc.plan.schema import LayerSpec, Plan
from scalable_assoc.stats.transforms import mixed_closure_scales

logger = logging.getLogger(__name__)


@dataclass
class LayerWork:
    """A layer's store, the samples used, its designs and analyses."""

    spec: LayerSpec
    store: AbundanceStore
    input_sha256: str
    sample_positions: np.ndarray  # positions into the store's samples
    designs: dict[str, DesignInput] = field(default_factory=dict)
    analyses: list[PreparedAnalysis] = field(default_factory=list)
    #: the shared feature list resolved against this layer (None: the prevalence filter decides)
    listed: LayerFeatureList | None = None

    def list_token(self) -> str:
        """Part of every cached file's name and chunk id: which feature list (if any) chose the kept features."""
        return self.listed.token if self.listed is not None else ""

    def samples_digest(self) -> str:
        """Short hash of the samples used: part of every cached file's name (--intersect-samples changes them, not the plan)."""
        return samples_digest(self.sample_positions)


@dataclass
class PreparedStudy:
    """Everything a run needs, resolved and validated."""

    plan: Plan
    plan_hash: str
    metadata_sha256: str
    layers: list[LayerWork]
    #: the shared feature list used (``--features`` or the plan's ``features:``), or None
    features: Path | None = None
    #: the minimum group size enforced (the plan's ``min_cases`` unless the run overrode it)
    min_cases: int = 10
    #: what the user must know about the inputs, logged and written to the manifest
    warnings: list[str] = field(default_factory=list)
    #: layers named by another layer's ``preprocess.clr_reference`` that have no analyses of their own
    #: (their filter and per-sample sums are computed, nothing is fitted)
    references: list[LayerWork] = field(default_factory=list)

    def layer_work(self, name: str) -> LayerWork:
        """The prepared layer called ``name`` (an analysed layer or a CLR reference)."""
        for work in [*self.layers, *self.references]:
            if work.spec.name == name:
                return work
        raise KeyError(name)


def _design_key(
    rows: np.ndarray, matrix: np.ndarray, names: tuple[str, ...], clusters: np.ndarray | None, references: tuple[str, ...]
) -> str:
    digest = hashlib.sha256()
    digest.update("\x1f".join(references).encode())
    digest.update(np.ascontiguousarray(rows, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(matrix, dtype=np.float64).tobytes())
    digest.update("\x1f".join(names).encode())
    if clusters is not None:
        digest.update(np.ascontiguousarray(clusters, dtype=np.int64).tobytes())
    return digest.hexdigest()[:20]


def _resolve_analysis(
    key: AnalysisKey,
    plan: Plan,
    columns: CovariateValues,
    exposure: ExposureValues,
    designs: dict[str, DesignInput],
    clusters: np.ndarray | None,
) -> PreparedAnalysis:
    values = exposure.values
    defined = ~np.isnan(values)
    covariates = []
    left_out = []
    for column in plan.adjustments[key.adjustment]:
        # A covariate identical to the exposure (e.g. adjusting the SSRI exposure for SSRI use) is left out.
        if column in exposure.source_columns or (
            pd.api.types.is_numeric_dtype(columns.frame[column].dtype) and np.array_equal(columns.numeric(column)[defined], values[defined])
        ):
            left_out.append(column)
        else:
            covariates.append(column)
    rows = np.flatnonzero(defined & complete_rows(columns, tuple(covariates)))
    # Participants stay those complete in every covariate of the set (as R's lm drops NA rows
    # before aliasing a constant column); only the constant columns leave the design.
    constant = constant_covariates(columns, tuple(covariates), plan.categorical, rows)
    if constant and plan.on_constant_covariate == "error":
        column, value = next(iter(constant.items()))
        raise DataError(
            f"layer '{key.layer}', exposure '{key.exposure}', adjustment set '{key.adjustment}': covariate '{column}' takes one "
            f"value ({value!r}) among the model's {rows.size} participants, so it cannot be adjusted for; remove it from "
            "the adjustment set, or set 'on_constant_covariate: drop' in the plan to leave it out of such models"
        )
    covariates = [c for c in covariates if c not in constant]
    matrix, names = covariate_columns(columns, tuple(covariates), plan.categorical, rows, plan.reference)
    # Codes renumbered 0..G-1 within the design, so kernels can size per-cluster sums by G.
    design_clusters = np.unique(clusters[rows], return_inverse=True)[1] if clusters is not None else None
    references = reference_levels(columns, tuple(covariates), plan.categorical, rows, plan.reference)
    design_key = _design_key(rows, matrix, names, design_clusters, references)
    designs.setdefault(design_key, DesignInput(design_key, rows, matrix, names, design_clusters, references))
    exposure_used = values[rows]
    n_cases = int((exposure_used == 1).sum()) if exposure.binary else None
    n_controls = int((exposure_used == 0).sum()) if exposure.binary else None
    levels: tuple[str, ...] = ()
    if exposure.levels:
        exposure_used, levels = _level_codes(key, exposure, exposure_used)
    return PreparedAnalysis(
        key,
        design_key,
        exposure_used,
        exposure.binary,
        tuple(covariates),
        tuple(left_out),
        int(rows.size),
        n_cases,
        n_controls,
        levels,
        constant=tuple(constant),
        min_carriers=plan.min_carriers,
        carrier_cells=plan.carrier_cells,
    )


def _level_codes(key: AnalysisKey, exposure: ExposureValues, codes: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """A categorical exposure's codes renumbered over the levels present among a design's participants, reference (0) first."""
    present = [exposure.levels[int(c)] for c in np.unique(codes)]
    reference = exposure.reference if exposure.reference is not None else (present[0] if present else None)
    where = f"layer '{key.layer}', exposure '{key.exposure}', adjustment set '{key.adjustment}'"
    if reference not in present:
        raise DataError(
            f"{where}: the reference level {reference!r} (plan key 'exposures.{key.exposure}.reference') has no participant with "
            f"complete covariates in this layer (levels present: {', '.join(map(repr, present))}); choose another reference"
        )
    if len(present) < 2:
        raise DataError(
            f"{where}: only level {reference!r} of the categorical exposure has participants with complete covariates; a joint test needs 2"
        )
    levels = (reference, *[level for level in present if level != reference])
    mapping = np.zeros(len(exposure.levels))
    mapping[[exposure.levels.index(level) for level in levels]] = np.arange(len(levels))
    return mapping[codes.astype(np.int64)], levels


def _mixed_scales_warning(spec: LayerSpec, store: AbundanceStore) -> str | None:
    """A warning when a layer's samples sum to about 100 (percent) in part and to about 1 (fractions) in part; else None."""
    totals = store.stored_sample_totals()
    if totals is None:  # a store written before per-sample totals were stored
        return None
    mixed = mixed_closure_scales(totals)
    if mixed is None:
        return None
    percent, fraction = mixed
    fewer, scale = (percent, "about 100 (percent)") if percent.size < fraction.size else (fraction, "about 1 (fractions)")
    examples = ", ".join(f"{store.sample_ids[i]} ({totals[i]:.3g})" for i in fewer[:3])
    return (
        f"layer '{spec.name}' ({spec.path}) mixes scales: {percent.size} samples sum to about 100 (percent) and "
        f"{fraction.size} to about 1 (fractions); the {fewer.size} summing to {scale} include {examples}. Put every sample on "
        "one scale before the run: log and CLR values differ by log(100) between them"
    )


def prepare_study(
    plan: Plan,
    cache_dir: Path,
    chunk_features: int | None = None,
    intersect_samples: bool = False,
    features: Path | None = None,
    min_cases: int | None = None,
    *,
    on_checked: Callable[[], None] | None = None,
) -> PreparedStudy:
    """Load and check every input of ``plan``; convert tables to stores; resolve every analysis.

    ``features`` (a feature list file) overrides the plan's ``features:``;
    ``min_cases`` the plan's ``min_cases`` (neither changes the plan's hash).
    ``on_checked()`` is called once the metadata, the plan's columns, exposures
    and feature list are checked, before the tables are read (a run starts its
    cluster then: most bad inputs fail before, in well under a second).
    Warnings are logged and kept in :attr:`PreparedStudy.warnings` (the manifest's).
    :class:`StudyPreparation` does the same in steps.
    """
    preparation = StudyPreparation(plan, cache_dir, chunk_features, intersect_samples, features, min_cases, on_checked=on_checked)
    for _ in preparation.parts():
        pass
    return preparation.study()


class StudyPreparation:
    """:func:`prepare_study` in steps: a run sends the layers whose tables are converted to the cluster while others convert.

    Creating it checks the metadata, the plan's columns, exposures and feature
    list, calls ``on_checked()`` and starts converting the tables (see
    :class:`_StoreOpening`). :meth:`parts` then yields the study a part at a
    time, each as soon as its stores are open and its analyses resolved;
    :meth:`study` is the whole study once every part is out. The parameters are
    :func:`prepare_study`'s.
    """

    def __init__(
        self,
        plan: Plan,
        cache_dir: Path,
        chunk_features: int | None = None,
        intersect_samples: bool = False,
        features: Path | None = None,
        min_cases: int | None = None,
        *,
        on_checked: Callable[[], None] | None = None,
    ) -> None:
        metadata = load_metadata(plan.metadata, plan.sample_id_column)
        check_covariates(metadata, plan.metadata, plan.adjustments, plan.categorical, plan.reference)
        if plan.cluster is not None and plan.cluster not in metadata.columns:
            raise PlanError(f"plan {plan.source}, key 'cluster': column '{plan.cluster}' is not in the metadata file {plan.metadata}")
        self.warnings = _Warnings()
        if plan.cluster is not None:
            for message in label_warnings(plan, metadata[plan.cluster]):
                self.warnings.add(message)
            permanova = plan.diversity is not None and plan.diversity.beta is not None  # permutes within clusters
            if not permanova and not any(plan.uses_clusters(model) for spec in plan.layers for model in spec.models):
                self.warnings.add(
                    f"the plan names 'cluster: {plan.cluster}', but no model uses it: lm and lm_nonzero report classical "
                    "standard errors unless the plan asks for cluster-robust ones ('lm: {se: cluster}')"
                )
        self.plan = plan
        self.min_cases = plan.min_cases if min_cases is None else min_cases
        self.inputs = _StudyInputs(
            plan,
            metadata,
            {spec.name: exposure_values(metadata, plan.metadata, spec, self.min_cases) for spec in plan.exposures},
            expand_analyses(plan),
            intersect_samples or plan.sample_mismatch == "intersect",
        )
        self.features = Path(features).resolve() if features is not None else plan.features
        self.feature_list = read_feature_list(self.features) if self.features is not None else None
        if on_checked is not None:  # start-up (engine/run.py): the cluster starts once the cheap checks passed
            on_checked()
        self.prepared: dict[str, LayerWork] = {}
        #: each layer's warnings, kept apart so that the manifest lists them in plan order whichever table converts first
        self.layer_warnings: dict[str, _Warnings] = {}
        self.stores = _StoreOpening(plan.layers, cache_dir, chunk_features)
        self.whole: PreparedStudy | None = None

    def parts(self) -> Iterator[PreparedStudy]:
        """The study a part at a time: the analysed layers (and the CLR reference layers they need) ready together, in plan order.

        A layer and its CLR reference (``preprocess.clr_reference``) come in one
        part, once both are ready: the reference's per-sample sums serve both.
        Each part is a :class:`PreparedStudy` of its layers only (its
        ``warnings`` empty: :meth:`study` has them all). Errors are those
        :func:`prepare_study` raises, which converts every table before
        preparing any layer in plan order: a layer failing stops the parts,
        and the first error in that order is raised once all tables are converted.
        """
        waiting = _clr_groups(self.plan.layers)
        order = [spec.name for spec in self.plan.layers]
        failed: dict[str, Exception] = {}
        for opened in self.stores.as_ready():
            for spec, store in opened:
                if failed and order.index(spec.name) > min(map(order.index, failed)):
                    continue  # a pass in plan order stops at the first layer that fails
                self.layer_warnings[spec.name] = _Warnings()
                try:
                    self.prepared[spec.name] = _prepare_layer(self.inputs, spec, store, self.feature_list, self.layer_warnings[spec.name])
                except Exception as error:  # raised once every table is converted (their errors first), as one pass meets them
                    failed[spec.name] = error
            if failed:
                continue  # no more parts go out
            ready = [names for names in waiting if names <= self.prepared.keys()]
            waiting = [names for names in waiting if names not in ready]
            part = self._part(set().union(*ready))
            if part.layers:
                yield part
        if failed:
            raise failed[min(failed, key=order.index)]

    def _part(self, names: set[str]) -> PreparedStudy:
        """The prepared layers ``names`` as a study of their own: those with analyses, and the CLR references they name."""
        in_order = [self.prepared[spec.name] for spec in self.plan.layers if spec.name in names]
        layers = [work for work in in_order if work.analyses]
        named = {work.spec.preprocess.clr_reference for work in layers} - {None}
        references = [work for work in in_order if work.spec.name in named and not work.analyses]
        for work in layers:
            if work.spec.preprocess.clr_reference is not None:
                reference_order(work, self.prepared[work.spec.preprocess.clr_reference])
        return self._study(layers, references, [])

    def _study(self, layers: list[LayerWork], references: list[LayerWork], warnings: list[str]) -> PreparedStudy:
        plan = self.plan
        return PreparedStudy(
            plan, plan.content_hash(), file_checksum(plan.metadata), layers, self.features, self.min_cases, warnings, references
        )

    def study(self) -> PreparedStudy:
        """The whole study, layers in plan order, once :meth:`parts` has yielded every part (DataError: no analysis at all)."""
        if self.whole is not None:
            return self.whole
        plan = self.plan
        if self.prepared.keys() != {spec.name for spec in plan.layers}:
            raise RuntimeError("StudyPreparation.study() before every part was prepared")
        prepared = [self.prepared[spec.name] for spec in plan.layers]
        layers = [work for work in prepared if work.analyses]
        if not layers:
            raise DataError(f"plan {plan.source}: no analysis to run (check 'analyses')")
        named = {work.spec.preprocess.clr_reference for work in layers} - {None}
        references = [work for work in prepared if work.spec.name in named and not work.analyses]
        warnings = [*self.warnings.messages, *(m for spec in plan.layers for m in self.layer_warnings[spec.name].messages)]
        for message in few_cluster_warnings(plan, layers):
            self.warnings.add(message)
            warnings.append(message)
        self.whole = self._study(layers, references, warnings)
        return self.whole


def _clr_groups(specs: Sequence[LayerSpec]) -> list[set[str]]:
    """The layers in groups that must be prepared together: each layer with the layers its CLR denominator links it to."""
    groups: list[set[str]] = []
    for spec in specs:
        linked = {spec.name} | ({spec.preprocess.clr_reference} if spec.preprocess.clr_reference is not None else set())
        joined = [group for group in groups if group & linked]
        groups = [group for group in groups if not group & linked] + [linked.union(*joined)]
    return groups


def reference_order(layer: LayerWork, reference: LayerWork) -> np.ndarray:
    """For each sample ``layer`` uses, its position among the samples ``reference`` uses (tables may order samples differently).

    A layer's CLR denominator comes from its reference layer per sample, so both must use the same samples (DataError if not).
    """
    used = [layer.store.sample_ids[i] for i in layer.sample_positions]
    index = {sample: position for position, sample in enumerate(reference.store.sample_ids[i] for i in reference.sample_positions)}
    if len(index) != len(used) or any(sample not in index for sample in used):
        missing = sorted(set(used) - set(index))
        raise DataError(
            f"layer '{layer.spec.name}' ({layer.spec.path}) takes its CLR denominator from layer '{reference.spec.name}' "
            f"({reference.spec.path}), which does not use the same samples ({len(used)} vs {len(index)}; "
            f"missing there: {', '.join(missing[:3]) or 'none'}). Give both tables the same samples."
        )
    return np.array([index[sample] for sample in used], dtype=np.int64)


class _Warnings:
    """What the user must know about the inputs: logged as it is found, and kept for the manifest."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def add(self, message: str) -> None:
        self.messages.append(message)
        logger.warning("%s", message)


@dataclass(frozen=True)
class _StudyInputs:
    """What every layer of a study is prepared against: the plan, the metadata, exposures and analysis keys."""

    plan: Plan
    metadata: pd.DataFrame
    exposures: dict[str, ExposureValues]
    keys: list[AnalysisKey]
    intersect: bool
    #: analyses resolved for a sample list, by (samples digest, exposure, adjustment), with their design: layers of the
    #: same samples share them (resolving one takes milliseconds of pandas work; a study has hundreds)
    resolved: dict[tuple[str, str, str], tuple[PreparedAnalysis, DesignInput]] = field(default_factory=dict)


def _open_layer_store(spec: LayerSpec, cache_dir: Path, chunk_features: int | None) -> tuple[AbundanceStore, str]:
    """One layer's store (its table converted into ``cache_dir`` if not done before) and its input's checksum."""
    return layer_store(
        spec.path,
        spec.format,
        spec.rank,
        cache_dir,
        spec.name,
        chunk_features,
        rank_given=spec.rank_given,
        store_layer=spec.store_layer,
        **spec.read_options(),
    )


class _StoreOpening:
    """Every layer's store and input checksum, opened (table files converted) two at a time, handed over as they are ready.

    Converting a table (parse, compress, write) keeps about one core busy, and a
    study has several tables (species, pathways, modules): the largest table file
    is converted in one helper thread, the other files meanwhile in another, so
    the calling thread is free to send the layers already converted to the
    cluster. Layers of one file stay in one thread, in plan order, so a file is
    never converted twice at once. The other thread opens the layers given as
    stores first, then converts its files smallest first: the first layer ready
    is the quickest, and the cluster starts fitting it while the rest convert
    (in the reference study the 3 MB gut-brain-module table, then the 27 MB
    species table, beside the 52 MB pathways). Errors are raised in plan order,
    as one thread would meet them: after an error a thread still opens the
    layers before it in plan order. The helpers are daemons: an interrupted run does
    not wait for its tables (a killed conversion leaves only a temporary folder,
    which the next run removes, see :func:`~scalable_assoc.io.runstate.remove_leftovers`).
    With fewer than two table files (stores, or one table), every layer is
    opened in the calling thread, as :meth:`as_ready` is first asked. A layer
    whose file does not exist is refused (by ``layer_store``) at once.
    """

    def __init__(self, specs: Sequence[LayerSpec], cache_dir: Path, chunk_features: int | None) -> None:
        self.specs = list(specs)
        self.cache_dir, self.chunk_features = cache_dir, chunk_features
        for spec in self.specs:
            if not spec.path.exists():  # a missing file is named before any table is converted, or any layer fitted
                _open_layer_store(spec, cache_dir, chunk_features)
        self.outcomes: dict[str, tuple[AbundanceStore, str] | Exception] = {}
        #: a layer's name once its outcome is in, None when a thread ends
        self.ready: queue.Queue[str | None] = queue.Queue()
        files: dict[Path, list[LayerSpec]] = {}
        for spec in self.specs:
            if spec.path.is_file():
                files.setdefault(spec.path.resolve(), []).append(spec)
        self.threads: list[threading.Thread] = []
        if len(files) >= 2:
            largest = max(files, key=lambda path: path.stat().st_size)
            in_largest = files[largest]  # in plan order, as the files' groups were built
            smallest_first = sorted((path for path in files if path != largest), key=lambda path: path.stat().st_size)
            stores = [spec for spec in self.specs if not spec.path.is_file()]  # converted already: opened first, at once
            others = [*stores, *(spec for path in smallest_first for spec in files[path])]
            for group, name in ((in_largest, "scalable-assoc-convert-largest"), (others, "scalable-assoc-convert")):
                thread = threading.Thread(target=self._open_each, args=(group,), name=name, daemon=True)
                thread.start()
                self.threads.append(thread)

    def _open_each(self, specs: Sequence[LayerSpec]) -> None:
        try:
            _open_each(specs, self.cache_dir, self.chunk_features, self.outcomes, self.ready, self.specs)
        finally:
            self.ready.put(None)

    def as_ready(self) -> Iterator[list[tuple[LayerSpec, tuple[AbundanceStore, str]]]]:
        """The layers ``(spec, (store, checksum))`` opened since the last step, in plan order, until all are; errors in plan order."""
        if not self.threads:
            _open_each(self.specs, self.cache_dir, self.chunk_features, self.outcomes)
            yield self._handed_over(set())
            return
        handed: set[str] = set()
        running = len(self.threads)
        while running:
            names = [self.ready.get()]
            while not self.ready.empty():  # every layer ready by now goes in one step
                names.append(self.ready.get())
            running -= names.count(None)
            if any(isinstance(outcome, Exception) for outcome in self.outcomes.values()):
                for thread in self.threads:  # an earlier layer in plan order may fail too: its error comes first
                    thread.join()
            step = self._handed_over(handed)
            if step:
                yield step

    def _handed_over(self, handed: set[str]) -> list[tuple[LayerSpec, tuple[AbundanceStore, str]]]:
        """The layers opened and not ``handed`` over yet (added to it), in plan order; the first error in plan order raised."""
        step = []
        for spec in self.specs:
            outcome = self.outcomes.get(spec.name)
            if outcome is None:  # not opened yet, or after an error in its thread (which is raised)
                continue
            if isinstance(outcome, Exception):
                raise outcome
            if spec.name not in handed:
                handed.add(spec.name)
                step.append((spec, outcome))
        return step


def _open_each(
    specs: Sequence[LayerSpec],
    cache_dir: Path,
    chunk_features: int | None,
    outcomes: dict[str, tuple[AbundanceStore, str] | Exception],
    ready: queue.Queue[str | None] | None = None,
    plan_order: Sequence[LayerSpec] = (),
) -> None:
    """Open each layer's store in order into ``outcomes`` (then its name into ``ready``); at an error, the error instead.

    After an error only the layers before it in ``plan_order`` (``specs`` itself when not given) are still opened:
    one of them may fail too, and the first error in plan order is the one raised.
    """
    rank = {spec.name: index for index, spec in enumerate(plan_order or specs)}
    failed_at: int | None = None
    for spec in specs:
        if failed_at is not None and rank[spec.name] > failed_at:
            continue
        try:
            outcomes[spec.name] = _open_layer_store(spec, cache_dir, chunk_features)
        except Exception as error:  # raised by _StoreOpening.as_ready in plan order
            outcomes[spec.name] = error
            failed_at = rank[spec.name]  # earlier in plan order than any error before (later layers are skipped)
        finally:
            if ready is not None:
                ready.put(spec.name)


def _prepare_layer(
    inputs: _StudyInputs,
    spec: LayerSpec,
    opened: tuple[AbundanceStore, str],
    feature_list: FeatureList | None,
    warnings: _Warnings,
) -> LayerWork:
    """One layer's participants, feature list and resolved analyses, on its store (``opened``: store and input checksum)."""
    plan, metadata = inputs.plan, inputs.metadata
    store, checksum = opened
    for note in store.notes:
        logger.info("layer '%s': %s", spec.name, note)
    mixed_scales = _mixed_scales_warning(spec, store)
    if mixed_scales is not None:
        warnings.add(mixed_scales)
    positions, warning = reconcile_samples(spec.name, spec.path, store.sample_ids, metadata, plan.metadata, inputs.intersect)
    if warning:
        warnings.add(warning)
    used_ids = [store.sample_ids[i] for i in positions]
    aligned = metadata.loc[used_ids]
    columns = CovariateValues(aligned)  # each column converted once for every analysis of these participants
    work = LayerWork(spec, store, checksum, positions)
    if feature_list is not None:
        listed = feature_list.for_layer(spec.name)
        if listed is None:
            logger.info(
                "note: the feature list %s has no rows for layer '%s'; its features are filtered by prevalence",
                feature_list.path,
                spec.name,
            )
        else:
            work.listed = match_feature_list(feature_list.path, spec.name, listed, store.feature_ids)
            if work.listed.n_absent:
                logger.info(
                    "  layer '%s': %d of %d listed features are not in %s and count as zero in every sample",
                    spec.name,
                    work.listed.n_absent,
                    work.listed.n_listed,
                    spec.path,
                )
    clusters = cluster_codes(aligned, plan.cluster) if plan.cluster is not None else None
    metadata_rows = metadata.index.get_indexer(used_ids)
    samples = hashlib.sha256("\x1f".join(used_ids).encode()).hexdigest()
    min_prevalence = spec.preprocess.min_prevalence if spec.preprocess.prevalence_within == "model" else 0.0
    # Models of one (exposure, adjustment) share its participants and design: resolve it once (for every layer of these samples).
    for key in inputs.keys:
        if key.layer != spec.name:
            continue
        shared = (samples, key.exposure, key.adjustment)
        if shared not in inputs.resolved:
            exposure = inputs.exposures[key.exposure]
            aligned_exposure = replace(exposure, values=exposure.values[metadata_rows])
            designs: dict[str, DesignInput] = {}
            resolved = _resolve_analysis(key, plan, columns, aligned_exposure, designs, clusters)
            inputs.resolved[shared] = (resolved, designs[resolved.design_key])
        analysis, design = inputs.resolved[shared]
        work.designs.setdefault(design.key, design)
        # Codes run 0..G-1 within a design.
        n_clusters = int(design.clusters.max(initial=-1)) + 1 if design.clusters is not None and plan.uses_clusters(key.model) else None
        work.analyses.append(
            replace(analysis, key=key, ols=plan.ols_options(key.model), n_clusters=n_clusters, min_prevalence=min_prevalence)
        )
    return work
