"""What a validated plan holds: its dataclasses and the names it may use (transforms, models, ranks ...).

Parsing and validation are in :mod:`scalable_assoc.plan.blocks` (one function
per block of the plan file) and :mod:`scalable_assoc.plan.schema` (the file).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from scalable_assoc.errors import PlanError
from scalable_assoc.plan.diversity import DiversitySpec

TRANSFORMS = ("clr", "log", "ast", "tss", "none")
LAYER_FORMATS = ("auto", "metaphlan", "wide", "parquet", "zarr", "humann", "long", "biom", "h5ad")
#: What a pair missing from a long table means: a zero, or an unknown value (NaN).
LONG_MISSING = ("zero", "na")
#: MetaPhlAn rank names and the clade prefix that marks them.
RANK_PREFIXES = {
    "kingdom": "k__",
    "phylum": "p__",
    "class": "c__",
    "order": "o__",
    "family": "f__",
    "genus": "g__",
    "species": "s__",
    "sgb": "t__",
}
FDR_BY_COLUMNS = ("layer", "exposure", "adjustment", "model")
#: Models a layer can be analysed with (README "Models").
MODELS = ("lm", "lm_nonzero", "prevalence", "lmm")
#: The OLS models, each with its own top-level plan key of options (:class:`OlsOptions`).
OLS_MODELS = ("lm", "lm_nonzero")
#: ``se`` of an OLS model: classical OLS standard errors, or cluster-robust (CR1) over the plan's ``cluster`` column.
STANDARD_ERRORS = ("classical", "cluster")
#: ``reference`` of a cluster-robust OLS model: Student's t with G - 1 degrees of freedom, or the normal.
REFERENCES = ("t", "normal")
SAMPLE_MISMATCH = ("error", "intersect")
#: Where ``preprocess.min_prevalence`` applies: over the layer's samples (the filter) or also per model.
PREVALENCE_WITHIN = ("layer", "model")
#: What a covariate constant among a model's participants does to that model.
ON_CONSTANT_COVARIATE = ("drop", "error")
#: When ``preprocess.filter`` applies the prevalence filter: before the transform (the transform runs over the
#: kept features) or after it (the transform, its pseudocount and per-sample sums run over all features; the
#: filter only chooses which features are fitted).
FILTER_ORDERS = ("before_transform", "after_transform")


@dataclass(frozen=True)
class Preprocess:
    """Filter and transform for one layer.

    ``min_prevalence`` is a fraction in [0, 1]; ``pseudocount`` is a number or
    the string ``"half_min"``.
    """

    min_prevalence: float = 0.0
    transform: str = "clr"
    pseudocount: float | str = "half_min"
    #: ``layer``: the filter over the layer's samples only; ``model``: also withhold rows
    #: whose feature is present in fewer than ``min_prevalence`` of the model's participants
    prevalence_within: str = "layer"
    #: ``before_transform`` or ``after_transform`` (:data:`FILTER_ORDERS`)
    filter: str = "before_transform"
    #: CLR only: the layer whose per-sample CLR denominator (mean log over its features, its own pseudocount)
    #: this layer's CLR subtracts; None: the layer itself (a layer naming itself is stored as None)
    clr_reference: str | None = None

    @property
    def transform_all_features(self) -> bool:
        """True when the transform's pseudocount and per-sample sums run over all features (``filter: after_transform``)."""
        return self.filter == "after_transform"


@dataclass(frozen=True)
class LayerSpec:
    """One abundance layer: where it is and how to read and preprocess it."""

    name: str
    path: Path
    format: str = "auto"
    rank: str = "species"
    preprocess: Preprocess = field(default_factory=Preprocess)
    models: tuple[str, ...] = ("lm",)
    #: a feature counts as present where its raw value is above this
    presence_threshold: float = 0.0
    #: HUMAnN tables: the per-species rows (``PWY|g__...s__...``) instead of the community totals
    stratified: bool = False
    #: long tables: the names of the (sample, feature, value) columns; None: sample_id, feature, value
    columns: tuple[str, str, str] | None = None
    #: long tables: a (sample, feature) pair that is not in the table is a ``zero`` or unknown (``na``)
    missing: str = "zero"
    #: .h5ad files: the layer read (``layers/<name>``) instead of ``X``; None: ``X``
    h5ad_layer: str | None = None
    #: whether the plan wrote ``rank`` (a BIOM table without taxonomy is then refused); how a table is read, not what it
    #: holds, so it is in no hash
    rank_given: bool = False
    #: a store holding several layers: the layer read; None: the one named as this plan layer
    store_layer: str | None = None

    def read_options(self) -> dict:
        """The reader options that are not at their defaults (keyword arguments of ``io.ingest.layer_store``)."""
        options: dict = {}
        if self.stratified:
            options["stratified"] = True
        if self.columns is not None:
            options["columns"] = self.columns
        if self.missing != "zero":
            options["missing"] = self.missing
        if self.h5ad_layer is not None:
            options["h5ad_layer"] = self.h5ad_layer
        return options


@dataclass(frozen=True)
class ExposureSpec:
    """A binary exposure (``cases``/``controls`` queries) or a ``column``: numeric, or categorical (tested jointly)."""

    name: str
    cases: str | None = None
    controls: str | None = None
    column: str | None = None
    #: the column's values are levels: one dummy per non-reference level, tested jointly by an F test
    categorical: bool = False
    #: the categorical exposure's reference level (None: the first level in sorted order)
    reference: str | None = None

    @property
    def is_query(self) -> bool:
        """True for a case/control exposure defined by two metadata queries."""
        return self.cases is not None


@dataclass(frozen=True)
class FdrSpec:
    """Benjamini-Hochberg within families given by ``by`` (columns of the results)."""

    method: str = "bh"
    by: tuple[str, ...] = FDR_BY_COLUMNS
    alpha: float = 0.05


@dataclass(frozen=True)
class OlsOptions:
    """How ``lm`` / ``lm_nonzero`` report uncertainty (plan keys ``lm:`` and ``lm_nonzero:``).

    ``se``: ``classical`` OLS standard errors whatever the plan's ``cluster``, or
    ``cluster``-robust ones (CR1) over it. ``reference``, for cluster-robust
    standard errors only: p-values from Student's t with G - 1 degrees of
    freedom (G clusters with a value of the feature), or from the ``normal``.
    """

    se: str = "classical"
    reference: str = "t"

    @property
    def cluster_robust(self) -> bool:
        """True when standard errors are cluster-robust."""
        return self.se == "cluster"


@dataclass(frozen=True)
class AnalysisSelection:
    """A block of the ``analyses:`` list: which exposures run under which adjustments."""

    exposures: tuple[str, ...]
    adjustments: tuple[str, ...]
    layers: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    """A validated plan. Paths are absolute (resolved against the plan file's folder)."""

    name: str
    source: Path
    metadata: Path
    sample_id_column: str
    sample_mismatch: str
    layers: tuple[LayerSpec, ...]
    exposures: tuple[ExposureSpec, ...]
    categorical: tuple[str, ...]
    #: adjustment set name -> metadata columns, references to other sets expanded, in order
    adjustments: dict[str, tuple[str, ...]]
    fdr: FdrSpec
    min_cases: int
    analyses: tuple[AnalysisSelection, ...]
    #: metadata column grouping related participants (family, household), or None
    cluster: str | None = None
    #: rows whose model has fewer participants with (or without) the feature get no estimate
    min_carriers: int = 3
    #: also apply min_carriers to each present/absent x case/control cell of a binary exposure
    carrier_cells: bool = False
    #: a covariate constant (or a categorical with one level) among a model's participants:
    #: ``drop`` it from that model (said in ``dropped_covariates``) or ``error``
    on_constant_covariate: str = "drop"
    #: categorical covariate -> its reference level (as text); others: the first level in sorted order
    reference: dict[str, str] = field(default_factory=dict)
    #: shared feature list (``features:``): the features every layer filters and transforms over, or None
    features: Path | None = None
    #: options of the OLS models (plan keys ``lm`` and ``lm_nonzero``)
    lm: OlsOptions = field(default_factory=OlsOptions)
    lm_nonzero: OlsOptions = field(default_factory=OlsOptions)
    #: the plan was loaded with ``--allow-outside-paths``: its files may lie outside its folder
    allow_outside_paths: bool = False
    #: community-level analyses (plan key ``diversity``): alpha diversity rows and PERMANOVA, or None
    diversity: DiversitySpec | None = None

    def content_hash(self) -> str:
        """A stable hash of what the plan asks for (not where the plan file lies)."""
        payload = _without_default_preprocess(asdict(self))
        payload.pop("source")
        payload.pop("allow_outside_paths")  # how the plan was loaded, not what it asks for
        if not payload["reference"]:
            payload.pop("reference")  # plans without the key keep the hash (and resumable chunks) they had
        if payload["features"] is None:
            payload.pop("features")  # plans without the key keep the hash they had before it existed
        if payload["diversity"] is None:
            payload.pop("diversity")
        _drop_default_read_options(payload)
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def rows_hash(self) -> str:
        """A hash of what the plan asks for that can change a result chunk's rows.

        Left out: the study name, FDR settings (q is computed over whole families
        after the chunks), ``min_cases`` (it refuses exposures, it changes no row),
        the ``analyses`` selection (each chunk id names its own analyses) and file
        paths (the files' contents are hashed into every chunk id instead), so a
        rerun with a new alpha, name or location reuses every finished chunk.
        """
        payload = _without_default_preprocess(asdict(self))
        # diversity: its rows are computed apart from the feature chunks, which it does not change
        for key in ("source", "name", "fdr", "min_cases", "analyses", "metadata", "features", "allow_outside_paths", "diversity"):
            payload.pop(key)
        for layer in payload["layers"]:
            layer.pop("path")
        # Reader options change the store's values (rows kept, what a missing pair means), so they are in.
        _drop_default_read_options(payload)
        if not payload["reference"]:
            payload.pop("reference")
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def ols_options(self, model: str) -> OlsOptions | None:
        """The options of an OLS model (``lm``, ``lm_nonzero``); None for the other models."""
        return getattr(self, model) if model in OLS_MODELS else None

    def uses_clusters(self, model: str) -> bool:
        """Whether ``model``'s fits use the cluster column: ``lmm`` always, an OLS model with ``se: cluster``."""
        options = self.ols_options(model)
        return model == "lmm" or (options is not None and options.cluster_robust)

    def layer(self, name: str) -> LayerSpec:
        """The layer called ``name``."""
        for spec in self.layers:
            if spec.name == name:
                return spec
        raise PlanError(f"plan {self.source}: no layer called '{name}'")


def _without_default_preprocess(payload: dict) -> dict:
    """``payload`` (a plan as a dict) without the preprocess keys left at the defaults they had before they existed.

    Plans that do not use ``filter`` or ``clr_reference`` keep their hashes, so their finished chunks are reused.
    """
    for layer in payload["layers"]:
        preprocess = layer["preprocess"]
        if preprocess.get("filter") == "before_transform":
            preprocess.pop("filter")
        if preprocess.get("clr_reference") is None:
            preprocess.pop("clr_reference", None)
    return payload


CATEGORICAL_EXPOSURE_MODELS = ("lm", "lm_nonzero")


def _drop_default_read_options(payload: dict) -> None:
    """Leave the layers' reader keys at their defaults out of a hash payload: plans written before they existed keep their hashes."""
    for layer in payload["layers"]:
        for key, default in (("stratified", False), ("columns", None), ("missing", "zero"), ("h5ad_layer", None), ("store_layer", None)):
            if layer[key] == default:
                layer.pop(key)
        layer.pop("rank_given")  # whether ``rank`` was written: the rank used is hashed already
