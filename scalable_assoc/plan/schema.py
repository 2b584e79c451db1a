"""The plan file: reading it, and validating it into a :class:`Plan` with errors that name the key.

The plan is the user contract (documented in README.md). Parsing checks only
what the plan itself can tell (keys, types, references between adjustment sets);
names of metadata columns are checked against the metadata when it is loaded.

Standard library and PyYAML only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from scalable_assoc.errors import PlanError
from scalable_assoc.plan.blocks import (
    check_categorical_models,
    check_lmm_cluster,
    expand_adjustments,
    parse_analyses,
    parse_exposures,
    parse_fdr,
    parse_layers,
    parse_model_rules,
    parse_models,
    parse_ols_options,
    parse_preprocess,
    parse_reference,
    parse_threshold,
    resolve_clr_references,
)
from scalable_assoc.plan.diversity import parse_diversity
from scalable_assoc.plan.spec import (
    CATEGORICAL_EXPOSURE_MODELS,
    FDR_BY_COLUMNS,
    LAYER_FORMATS,
    MODELS,
    OLS_MODELS,
    ON_CONSTANT_COVARIATE,
    PREVALENCE_WITHIN,
    RANK_PREFIXES,
    REFERENCES,
    SAMPLE_MISMATCH,
    STANDARD_ERRORS,
    TRANSFORMS,
    AnalysisSelection,
    ExposureSpec,
    FdrSpec,
    LayerSpec,
    OlsOptions,
    Plan,
    Preprocess,
)
from scalable_assoc.plan.values import checked_mapping, location, name_list, nonempty_string, plan_path

# The dataclasses and names live in plan.spec; they stay importable from here, where the plan is read.
__all__ = [
    "CATEGORICAL_EXPOSURE_MODELS",
    "FDR_BY_COLUMNS",
    "LAYER_FORMATS",
    "MODELS",
    "OLS_MODELS",
    "ON_CONSTANT_COVARIATE",
    "PREVALENCE_WITHIN",
    "RANK_PREFIXES",
    "REFERENCES",
    "SAMPLE_MISMATCH",
    "STANDARD_ERRORS",
    "TRANSFORMS",
    "AnalysisSelection",
    "ExposureSpec",
    "FdrSpec",
    "LayerSpec",
    "OlsOptions",
    "Plan",
    "Preprocess",
    "load_plan",
    "parse_plan",
]


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

    Parameters
    ----------
    path
        The plan file (UTF-8 YAML); a key repeated in one mapping is refused.
    allow_outside_paths
        Let the plan name files outside its own folder.

    Returns
    -------
    Plan
        The validated plan, paths absolute.

    Examples
    --------
    >>> from scalable_assoc import load_plan
    >>> plan = load_plan(study.plan_path)  # the plan simulate_study wrote
    >>> [layer.name for layer in plan.layers], plan.fdr.alpha
    (['species', 'pathways', 'gbm'], 0.05)
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


#: Keys a plan file may have at its top level.
TOP_LEVEL_KEYS = (
    "name",
    "data",
    "preprocess",
    "exposures",
    "covariates",
    "adjustments",
    "fdr",
    "min_cases",
    "analyses",
    "models",
    "presence_threshold",
    "cluster",
    "min_carriers",
    "carrier_cells",
    "on_constant_covariate",
    "features",
    "diversity",
    *OLS_MODELS,
)


def parse_plan(raw: Any, source: Path, allow_outside_paths: bool = False) -> Plan:
    """Validate an already-parsed plan mapping (``source`` names it in errors and anchors relative paths).

    Paths must stay inside ``source``'s folder unless ``allow_outside_paths``.

    Parameters
    ----------
    raw
        The plan as YAML gave it (a mapping; None counts as empty).
    source
        The plan file's path, absolute.
    allow_outside_paths
        Let the plan name files outside ``source``'s folder.

    Returns
    -------
    Plan
        The validated plan.
    """
    raw = checked_mapping(source, "", raw if raw is not None else {}, TOP_LEVEL_KEYS, required=("data", "exposures", "adjustments"))
    name = nonempty_string(source, "name", raw.get("name", source.stem))
    data = checked_mapping(
        source, "data", raw["data"], ("metadata", "layers", "sample_id_column", "sample_mismatch"), required=("metadata", "layers")
    )
    mismatch = data.get("sample_mismatch", "error")
    if mismatch not in SAMPLE_MISMATCH:
        raise PlanError(f"{location(source, 'data.sample_mismatch')}: expected one of {', '.join(SAMPLE_MISMATCH)}, got {mismatch!r}")
    preprocess = parse_preprocess(source, "preprocess", raw.get("preprocess", {}), Preprocess())
    models = parse_models(source, "models", raw.get("models", ["lm"]))
    threshold = parse_threshold(source, "presence_threshold", raw.get("presence_threshold", 0.0))
    cluster = nonempty_string(source, "cluster", raw["cluster"]) if raw.get("cluster") is not None else None
    layers = parse_layers(source, data["layers"], preprocess, models, threshold, allow_outside_paths)
    layers = resolve_clr_references(source, data["layers"], layers)
    check_lmm_cluster(source, layers, cluster)
    fitted = {model for layer in layers for model in layer.models}
    ols = {model: parse_ols_options(source, model, raw.get(model), cluster, model in fitted) for model in OLS_MODELS}
    exposures = parse_exposures(source, raw["exposures"])
    covariates = checked_mapping(source, "covariates", raw.get("covariates", {}), ("categorical", "reference"))
    categorical = name_list(source, "covariates.categorical", covariates.get("categorical", []))
    reference = parse_reference(source, covariates.get("reference", {}), categorical)
    adjustments = expand_adjustments(source, raw["adjustments"])
    fdr = parse_fdr(source, raw.get("fdr", {}))
    min_cases, min_carriers, carrier_cells, on_constant = parse_model_rules(source, raw)
    features = plan_path(source, "features", raw["features"], allow_outside_paths) if raw.get("features") is not None else None
    analyses = parse_analyses(
        source, raw.get("analyses"), tuple(e.name for e in exposures), tuple(adjustments), tuple(layer.name for layer in layers)
    )
    check_categorical_models(source, exposures, layers, analyses, cluster)
    diversity = parse_diversity(source, raw.get("diversity"), tuple(layer.name for layer in layers))
    return Plan(
        name=name,
        source=source,
        metadata=plan_path(source, "data.metadata", data["metadata"], allow_outside_paths),
        sample_id_column=nonempty_string(source, "data.sample_id_column", data.get("sample_id_column", "sample_id")),
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
        diversity=diversity,
    )
