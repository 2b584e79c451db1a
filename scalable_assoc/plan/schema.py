"""The plan file: schema, validation with errors that name the key, normalised form.

The plan is the user contract (documented in README.md). Parsing checks only
what the plan itself can tell (keys, types, references between adjustment sets);
names of metadata columns are checked against the metadata when it is loaded.

Standard library and PyYAML only.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from scalable_assoc.errors import PlanError
from scalable_assoc.plan.expressions import parse_query

TRANSFORMS = ("clr", "log", "ast", "tss", "none")
LAYER_FORMATS = ("auto", "metaphlan", "wide", "parquet", "zarr")
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

    def content_hash(self) -> str:
        """A stable hash of what the plan asks for (not where the plan file lies)."""
        payload = asdict(self)
        payload.pop("source")
        payload.pop("allow_outside_paths")  # how the plan was loaded, not what it asks for
        if not payload["reference"]:
            payload.pop("reference")  # plans without the key keep the hash (and resumable chunks) they had
        if payload["features"] is None:
            payload.pop("features")  # plans without the key keep the hash they had before it existed
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
        payload = asdict(self)
        for key in ("source", "name", "fdr", "min_cases", "analyses", "metadata", "features", "allow_outside_paths"):
            payload.pop(key)
        for layer in payload["layers"]:
            layer.pop("path")
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


def _where(source: Path, key: str) -> str:
    return f"plan {source}, key '{key}'" if key else f"plan {source}, top level"


def _check_keys(source: Path, key: str, mapping: Any, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict:
    if not isinstance(mapping, dict):
        raise PlanError(f"{_where(source, key)}: expected a mapping (key: value), got {type(mapping).__name__}")
    for name in mapping:
        if name not in allowed:
            near = difflib.get_close_matches(str(name), allowed, n=1)
            hint = f" Did you mean '{near[0]}'?" if near else ""
            path = f"{key}.{name}" if key else str(name)
            raise PlanError(f"plan {source}: unknown key '{path}'.{hint} Allowed here: {', '.join(allowed)}.")
    for name in required:
        if name not in mapping:
            path = f"{key}.{name}" if key else name
            raise PlanError(f"plan {source}: missing required key '{path}'.")
    return mapping


def _string(source: Path, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PlanError(f"{_where(source, key)}: expected a non-empty string, got {value!r}")
    return value


def _plan_path(source: Path, key: str, value: Any, allow_outside: bool) -> Path:
    """A path named by the plan, resolved (symlinks followed) against the plan's folder, which it must stay inside.

    A plan may come from someone else (one plan sent to every biobank), so unless
    ``allow_outside`` it may only name files in its own folder or below it.
    """
    text = _string(source, key, value)
    folder = source.parent.resolve()
    path = (folder / text).resolve()
    if not allow_outside and not path.is_relative_to(folder):
        raise PlanError(
            f"{_where(source, key)}: {text!r} resolves to {path}, outside the plan's folder {folder}. A plan may only name "
            "files in its own folder or below it, so that a plan written elsewhere cannot read other files on this machine. "
            "Move (or copy) the file beside the plan, or, if you trust this plan, pass --allow-outside-paths to "
            "'scalable-assoc run' (allow_outside_paths=True from Python)."
        )
    return path


def _string_list(source: Path, key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise PlanError(f"{_where(source, key)}: expected a list of names, got {value!r}")
    return tuple(value)


def _parse_preprocess(source: Path, key: str, raw: Any, base: Preprocess) -> Preprocess:
    raw = _check_keys(source, key, raw, ("min_prevalence", "transform", "pseudocount", "prevalence_within"))
    min_prevalence = raw.get("min_prevalence", base.min_prevalence)
    if isinstance(min_prevalence, bool) or not isinstance(min_prevalence, (int, float)) or not 0 <= min_prevalence <= 1:
        raise PlanError(f"{_where(source, key + '.min_prevalence')}: expected a fraction between 0 and 1, got {min_prevalence!r}")
    transform = raw.get("transform", base.transform)
    if transform not in TRANSFORMS:
        raise PlanError(f"{_where(source, key + '.transform')}: expected one of {', '.join(TRANSFORMS)}, got {transform!r}")
    pseudocount = raw.get("pseudocount", base.pseudocount)
    if pseudocount != "half_min" and (
        isinstance(pseudocount, bool) or not isinstance(pseudocount, (int, float)) or not pseudocount >= 0
    ):
        raise PlanError(f"{_where(source, key + '.pseudocount')}: expected 'half_min' or a non-negative number, got {pseudocount!r}")
    if transform in ("clr", "log") and pseudocount == 0:
        raise PlanError(f"{_where(source, key + '.pseudocount')}: the {transform} transform needs a positive pseudocount (zeros have no logarithm)")
    within = raw.get("prevalence_within", base.prevalence_within)
    if within not in PREVALENCE_WITHIN:
        raise PlanError(f"{_where(source, key + '.prevalence_within')}: expected one of {', '.join(PREVALENCE_WITHIN)}, got {within!r}")
    return Preprocess(float(min_prevalence), str(transform), pseudocount if pseudocount == "half_min" else float(pseudocount), str(within))


def _parse_models(source: Path, key: str, raw: Any) -> tuple[str, ...]:
    models = _string_list(source, key, raw)
    if not models:
        raise PlanError(f"{_where(source, key)}: name at least one model ({', '.join(MODELS)})")
    for model in models:
        if model not in MODELS:
            near = difflib.get_close_matches(model, MODELS, n=1)
            hint = f" Did you mean '{near[0]}'?" if near else ""
            raise PlanError(f"{_where(source, key)}: unknown model '{model}'.{hint} Models: {', '.join(MODELS)}.")
    return tuple(dict.fromkeys(models))


def _parse_ols_options(source: Path, model: str, raw: Any, cluster: str | None, fitted: bool) -> OlsOptions:
    raw = _check_keys(source, model, raw if raw is not None else {}, ("se", "reference"))
    se = raw.get("se", "classical")
    if se not in STANDARD_ERRORS:
        raise PlanError(f"{_where(source, model + '.se')}: expected one of {', '.join(STANDARD_ERRORS)}, got {se!r}")
    if se == "cluster" and cluster is None:
        raise PlanError(
            f"{_where(source, model + '.se')}: cluster-robust standard errors need 'cluster: <metadata column>' "
            "naming the groups (families, households) whose members are correlated"
        )
    reference = raw.get("reference", "t")
    if reference not in REFERENCES:
        raise PlanError(f"{_where(source, model + '.reference')}: expected one of {', '.join(REFERENCES)}, got {reference!r}")
    if "reference" in raw and se != "cluster":
        raise PlanError(
            f"{_where(source, model + '.reference')}: applies to cluster-robust standard errors only ('{model}: {{se: cluster}}'); "
            "classical OLS p-values come from Student's t with n - rank degrees of freedom"
        )
    if raw and not fitted:
        raise PlanError(f"{_where(source, model)}: options for model '{model}', which no layer fits (add it to 'models')")
    return OlsOptions(str(se), str(reference))


def _parse_threshold(source: Path, key: str, raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not raw >= 0:
        raise PlanError(f"{_where(source, key)}: expected a non-negative number (a feature is present where its value is above it), got {raw!r}")
    return float(raw)


def _parse_layers(
    source: Path, raw: Any, preprocess: Preprocess, models: tuple[str, ...], threshold: float, allow_outside: bool = False
) -> tuple[LayerSpec, ...]:
    if not isinstance(raw, dict) or not raw:
        raise PlanError(f"{_where(source, 'data.layers')}: expected a mapping of layer name to file, with at least one layer")
    layers = []
    for name, value in raw.items():
        key = f"data.layers.{name}"
        if isinstance(value, str):
            value = {"path": value}
        value = _check_keys(source, key, value, ("path", "format", "rank", "preprocess", "models", "presence_threshold"), required=("path",))
        fmt = value.get("format", "auto")
        if fmt not in LAYER_FORMATS:
            raise PlanError(f"{_where(source, key + '.format')}: expected one of {', '.join(LAYER_FORMATS)}, got {fmt!r}")
        rank = value.get("rank", "species")
        if rank not in RANK_PREFIXES:
            raise PlanError(f"{_where(source, key + '.rank')}: expected one of {', '.join(RANK_PREFIXES)}, got {rank!r}")
        layer_pre = _parse_preprocess(source, key + ".preprocess", value.get("preprocess", {}), preprocess)
        path = _plan_path(source, key + ".path", value["path"], allow_outside)
        layer_models = _parse_models(source, key + ".models", value["models"]) if "models" in value else models
        layer_threshold = _parse_threshold(source, key + ".presence_threshold", value["presence_threshold"]) if "presence_threshold" in value else threshold
        layers.append(LayerSpec(str(name), path, fmt, rank, layer_pre, layer_models, layer_threshold))
    return tuple(layers)


def _parse_exposures(source: Path, raw: Any) -> tuple[ExposureSpec, ...]:
    if not isinstance(raw, dict) or not raw:
        raise PlanError(f"{_where(source, 'exposures')}: expected a mapping of exposure name to its definition, with at least one exposure")
    exposures = []
    for name, value in raw.items():
        key = f"exposures.{name}"
        value = _check_keys(source, key, value, ("cases", "controls", "column", "categorical", "reference"))
        categorical = value.get("categorical", False)
        if not isinstance(categorical, bool):
            raise PlanError(f"{_where(source, key + '.categorical')}: expected true or false, got {categorical!r}")
        if (categorical or "reference" in value) and "column" not in value:
            raise PlanError(f"{_where(source, key)}: 'categorical' and 'reference' apply to a 'column' exposure, not to cases/controls queries")
        if "reference" in value and not categorical:
            raise PlanError(f"{_where(source, key + '.reference')}: a reference level needs 'categorical: true'")
        if "column" in value:
            if "cases" in value or "controls" in value:
                raise PlanError(f"{_where(source, key)}: give either 'column' or 'cases' and 'controls', not both")
            reference = str(value["reference"]) if value.get("reference") is not None else None
            exposures.append(ExposureSpec(str(name), column=_string(source, key + ".column", value["column"]), categorical=categorical, reference=reference))
        elif "cases" in value and "controls" in value:
            queries = {part: _string(source, f"{key}.{part}", value[part]) for part in ("cases", "controls")}
            for part, query in queries.items():
                # Refused here, before any file is read: a plan is data, and a query outside the language never runs.
                parse_query(query, _where(source, f"{key}.{part}"))
            exposures.append(ExposureSpec(str(name), cases=queries["cases"], controls=queries["controls"]))
        else:
            raise PlanError(f"{_where(source, key)}: needs both 'cases' and 'controls' queries, or a 'column'")
    return tuple(exposures)


def _parse_reference(source: Path, raw: Any, categorical: tuple[str, ...]) -> dict[str, str]:
    """``covariates.reference``: column -> reference level, for columns of ``covariates.categorical``.

    Levels are compared as text (metadata values are read as text for
    categorical covariates), so ``site: 2`` names the level ``"2"``.
    Whether the level occurs is checked against the metadata when it is loaded.
    """
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise PlanError(f"{_where(source, 'covariates.reference')}: expected a mapping of categorical covariate to its reference level (e.g. {{sex: female}}), got {raw!r}")
    reference = {}
    for column, level in raw.items():
        key = f"covariates.reference.{column}"
        if column not in categorical:
            listed = ", ".join(categorical) if categorical else "none"
            raise PlanError(
                f"{_where(source, key)}: '{column}' is not listed in covariates.categorical (listed: {listed}); "
                "a reference level applies to a categorical covariate only"
            )
        if isinstance(level, bool):
            # YAML reads unquoted yes/no/true/false as booleans.
            raise PlanError(f"{_where(source, key)}: got {level!r}; quote the level as it is written in the metadata (e.g. \"no\")")
        if isinstance(level, (int, float)):
            level = str(level)
        reference[str(column)] = _string(source, key, level)
    return reference


def _expand_adjustments(source: Path, raw: Any) -> dict[str, tuple[str, ...]]:
    if not isinstance(raw, dict) or not raw:
        raise PlanError(f"{_where(source, 'adjustments')}: expected a mapping of set name to a list of covariates or set names")
    sets = {str(name): _string_list(source, f"adjustments.{name}", value if value is not None else []) for name, value in raw.items()}
    expanded: dict[str, tuple[str, ...]] = {}

    def expand(name: str, trail: tuple[str, ...]) -> tuple[str, ...]:
        if name in trail:
            cycle = " -> ".join(trail + (name,))
            raise PlanError(f"{_where(source, 'adjustments.' + name)}: adjustment sets name each other in a cycle ({cycle})")
        if name in expanded:
            return expanded[name]
        columns: list[str] = []
        for item in sets[name]:
            # A set may name a column of its own name (``ssri: [base, ssri]``): that is the column.
            is_set = item in sets and item != name
            for column in expand(item, trail + (name,)) if is_set else (item,):
                if column not in columns:
                    columns.append(column)
        expanded[name] = tuple(columns)
        return expanded[name]

    for name in sets:
        expand(name, ())
    return {name: expanded[name] for name in sets}


def _parse_fdr(source: Path, raw: Any) -> FdrSpec:
    raw = _check_keys(source, "fdr", raw, ("method", "by", "alpha"))
    method = raw.get("method", "bh")
    if method != "bh":
        raise PlanError(f"{_where(source, 'fdr.method')}: only 'bh' (Benjamini-Hochberg) is supported, got {method!r}")
    by = _string_list(source, "fdr.by", raw.get("by", list(FDR_BY_COLUMNS)))
    for column in by:
        if column not in FDR_BY_COLUMNS:
            raise PlanError(f"{_where(source, 'fdr.by')}: '{column}' is not a results column to group by; use any of {', '.join(FDR_BY_COLUMNS)}")
    alpha = raw.get("alpha", 0.05)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise PlanError(f"{_where(source, 'fdr.alpha')}: expected a number between 0 and 1, got {alpha!r}")
    return FdrSpec("bh", by, float(alpha))


def _parse_analyses(source: Path, raw: Any, plan_exposures: tuple[str, ...], plan_sets: tuple[str, ...], plan_layers: tuple[str, ...]) -> tuple[AnalysisSelection, ...]:
    if raw is None:
        return (AnalysisSelection(plan_exposures, plan_sets, plan_layers),)
    if not isinstance(raw, list) or not raw:
        raise PlanError(f"{_where(source, 'analyses')}: expected a list of {{exposures: [...], adjustments: [...]}} blocks")
    selections = []
    for index, block in enumerate(raw):
        key = f"analyses[{index}]"
        block = _check_keys(source, key, block, ("exposures", "adjustments", "layers"))
        picked = []
        for part, known in (("exposures", plan_exposures), ("adjustments", plan_sets), ("layers", plan_layers)):
            names = _string_list(source, f"{key}.{part}", block[part]) if part in block else known
            for name in names:
                if name not in known:
                    raise PlanError(f"{_where(source, key + '.' + part)}: '{name}' is not defined under '{part}' (defined: {', '.join(known)})")
            picked.append(names)
        selections.append(AnalysisSelection(*picked))
    return tuple(selections)


#: Models that fit a categorical exposure's level dummies jointly (one row per level and an F test).
CATEGORICAL_EXPOSURE_MODELS = ("lm", "lm_nonzero")


def _check_categorical_models(
    source: Path, exposures: tuple[ExposureSpec, ...], layers: tuple[LayerSpec, ...], analyses: tuple[AnalysisSelection, ...], cluster: str | None
) -> None:
    """A categorical exposure runs under the OLS models only, with classical standard errors."""
    for exposure in exposures:
        if not exposure.categorical:
            continue
        for selection in analyses:
            if exposure.name not in selection.exposures:
                continue
            for layer in layers:
                if layer.name not in selection.layers:
                    continue
                for model in layer.models:
                    if model not in CATEGORICAL_EXPOSURE_MODELS:
                        raise PlanError(
                            f"{_where(source, 'exposures.' + exposure.name + '.categorical')}: the categorical exposure '{exposure.name}' "
                            f"cannot be analysed with model '{model}' (layer '{layer.name}'): its levels are tested jointly by OLS models "
                            f"only ({', '.join(CATEGORICAL_EXPOSURE_MODELS)}). Leave '{model}' out for this exposure (an 'analyses' block "
                            "per layer) or define one cases/controls exposure per level."
                        )
                if cluster is not None:
                    raise PlanError(
                        f"{_where(source, 'exposures.' + exposure.name + '.categorical')}: the categorical exposure '{exposure.name}' "
                        f"cannot be combined with 'cluster: {cluster}': its joint F test assumes independent participants "
                        "(no cluster-robust version yet)"
                    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key repeated in one mapping.

    Plain YAML keeps the last of two ``MDD:`` exposures silently, so a copy-paste
    slip would drop an analysis without a word.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:  # type: ignore[override]
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[arg-type]
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key; the base class reports it
                continue
            if first != key_node.start_mark.line + 1:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' appears twice in the same mapping (first at line {first})", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


def load_plan(path: str | Path, allow_outside_paths: bool = False) -> Plan:
    """Read and validate a plan file; raise :class:`PlanError` naming the key at fault.

    The files the plan names must lie in its folder (or below it) unless
    ``allow_outside_paths`` (``run --allow-outside-paths``).
    """
    source = Path(path).resolve()
    if not source.is_file():
        what = "is a folder, not a plan file" if source.is_dir() else "does not exist"
        raise PlanError(f"plan file {path} {what}")
    try:
        text = source.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise PlanError(f"plan {source} is not a UTF-8 text file (byte {error.start}); save it as plain UTF-8 YAML") from None
    except OSError as error:
        raise PlanError(f"plan {source} cannot be read: {error.strerror or error}") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        # The offending line itself, so the user need not count lines.
        lines = text.splitlines()
        shown = f" (line {mark.line + 1}: {lines[mark.line].strip()!r})" if mark is not None and mark.line < len(lines) else ""
        # A repeated key is valid syntax that we refuse; everything else is a syntax error.
        kind = "invalid YAML" if isinstance(error, yaml.constructor.ConstructorError) else "YAML syntax error"
        raise PlanError(f"plan {source}: {kind}{where}: {' '.join(str(problem).split())}{shown}") from None
    return parse_plan(raw, source, allow_outside_paths)


def parse_plan(raw: Any, source: Path, allow_outside_paths: bool = False) -> Plan:
    """Validate an already-parsed plan mapping (``source`` names it in errors and anchors relative paths).

    Paths must stay inside ``source``'s folder unless ``allow_outside_paths``.
    """
    raw = _check_keys(
        source,
        "",
        raw if raw is not None else {},
        (
            "name", "data", "preprocess", "exposures", "covariates", "adjustments", "fdr", "min_cases", "analyses", "models",
            "presence_threshold", "cluster", "min_carriers", "carrier_cells", "on_constant_covariate", "features", *OLS_MODELS,
        ),
        required=("data", "exposures", "adjustments"),
    )
    name = _string(source, "name", raw.get("name", source.stem))
    data = _check_keys(source, "data", raw["data"], ("metadata", "layers", "sample_id_column", "sample_mismatch"), required=("metadata", "layers"))
    mismatch = data.get("sample_mismatch", "error")
    if mismatch not in SAMPLE_MISMATCH:
        raise PlanError(f"{_where(source, 'data.sample_mismatch')}: expected one of {', '.join(SAMPLE_MISMATCH)}, got {mismatch!r}")
    preprocess = _parse_preprocess(source, "preprocess", raw.get("preprocess", {}), Preprocess())
    models = _parse_models(source, "models", raw.get("models", ["lm"]))
    threshold = _parse_threshold(source, "presence_threshold", raw.get("presence_threshold", 0.0))
    cluster = _string(source, "cluster", raw["cluster"]) if raw.get("cluster") is not None else None
    layers = _parse_layers(source, data["layers"], preprocess, models, threshold, allow_outside_paths)
    if cluster is None:
        for layer in layers:
            if "lmm" in layer.models:
                raise PlanError(
                    f"{_where(source, 'models')}: model 'lmm' (layer '{layer.name}') needs 'cluster: <metadata column>' "
                    "naming the groups (families, households) that get a random intercept"
                )
    fitted = {model for layer in layers for model in layer.models}
    ols = {model: _parse_ols_options(source, model, raw.get(model), cluster, model in fitted) for model in OLS_MODELS}
    exposures = _parse_exposures(source, raw["exposures"])
    covariates = _check_keys(source, "covariates", raw.get("covariates", {}), ("categorical", "reference"))
    categorical = _string_list(source, "covariates.categorical", covariates.get("categorical", []))
    reference = _parse_reference(source, covariates.get("reference", {}), categorical)
    adjustments = _expand_adjustments(source, raw["adjustments"])
    fdr = _parse_fdr(source, raw.get("fdr", {}))
    min_cases = raw.get("min_cases", 10)
    if isinstance(min_cases, bool) or not isinstance(min_cases, int) or min_cases < 1:
        raise PlanError(f"{_where(source, 'min_cases')}: expected a positive whole number, got {min_cases!r}")
    min_carriers = raw.get("min_carriers", 3)
    if isinstance(min_carriers, bool) or not isinstance(min_carriers, int) or min_carriers < 0:
        raise PlanError(f"{_where(source, 'min_carriers')}: expected a whole number of participants (0 turns the rule off), got {min_carriers!r}")
    carrier_cells = raw.get("carrier_cells", False)
    if not isinstance(carrier_cells, bool):
        raise PlanError(f"{_where(source, 'carrier_cells')}: expected true or false, got {carrier_cells!r}")
    on_constant = raw.get("on_constant_covariate", "drop")
    if on_constant not in ON_CONSTANT_COVARIATE:
        raise PlanError(f"{_where(source, 'on_constant_covariate')}: expected one of {', '.join(ON_CONSTANT_COVARIATE)}, got {on_constant!r}")
    features = _plan_path(source, "features", raw["features"], allow_outside_paths) if raw.get("features") is not None else None
    analyses = _parse_analyses(
        source, raw.get("analyses"), tuple(e.name for e in exposures), tuple(adjustments), tuple(layer.name for layer in layers)
    )
    _check_categorical_models(source, exposures, layers, analyses, cluster)
    return Plan(
        name=name,
        source=source,
        metadata=_plan_path(source, "data.metadata", data["metadata"], allow_outside_paths),
        sample_id_column=_string(source, "data.sample_id_column", data.get("sample_id_column", "sample_id")),
        sample_mismatch=mismatch,
        layers=layers,
        exposures=exposures,
        categorical=categorical,
        adjustments=adjustments,
        fdr=fdr,
        min_cases=min_cases,
        analyses=analyses,
        cluster=cluster,
        min_carriers=min_carriers,
        carrier_cells=carrier_cells,
        on_constant_covariate=on_constant,
        reference=reference,
        features=features,
        lm=ols["lm"],
        lm_nonzero=ols["lm_nonzero"],
        allow_outside_paths=allow_outside_paths,
    )
