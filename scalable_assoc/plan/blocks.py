"""Parsing each block of a plan file (preprocess, models, layers, exposures, adjustments, fdr, analyses) into its dataclass.

Every function takes the plan file's path (``source``), to name it in errors, and
the block as YAML gave it; it raises :class:`~scalable_assoc.errors.PlanError`
naming the key at fault.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from scalable_assoc.errors import PlanError, did_you_mean
from scalable_assoc.plan.expressions import parse_query
from scalable_assoc.plan.spec import (
    CATEGORICAL_EXPOSURE_MODELS,
    FDR_BY_COLUMNS,
    FILTER_ORDERS,
    LAYER_FORMATS,
    LONG_MISSING,
    MODELS,
    ON_CONSTANT_COVARIATE,
    PREVALENCE_WITHIN,
    RANK_PREFIXES,
    REFERENCES,
    STANDARD_ERRORS,
    TRANSFORMS,
    AnalysisSelection,
    ExposureSpec,
    FdrSpec,
    LayerSpec,
    OlsOptions,
    Preprocess,
)
from scalable_assoc.plan.values import checked_mapping, location, name_list, nonempty_string, plan_path


def parse_preprocess(source: Path, key: str, raw: Any, base: Preprocess) -> Preprocess:
    """``preprocess`` (top level, or a layer's, whose unset keys come from ``base``) as a :class:`Preprocess`."""
    raw = checked_mapping(source, key, raw, ("min_prevalence", "transform", "pseudocount", "prevalence_within", "filter", "clr_reference"))
    min_prevalence = raw.get("min_prevalence", base.min_prevalence)
    if isinstance(min_prevalence, bool) or not isinstance(min_prevalence, (int, float)) or not 0 <= min_prevalence <= 1:
        raise PlanError(f"{location(source, key + '.min_prevalence')}: expected a fraction between 0 and 1, got {min_prevalence!r}")
    transform = raw.get("transform", base.transform)
    if transform not in TRANSFORMS:
        raise PlanError(f"{location(source, key + '.transform')}: expected one of {', '.join(TRANSFORMS)}, got {transform!r}")
    pseudocount = raw.get("pseudocount", base.pseudocount)
    if pseudocount != "half_min" and (isinstance(pseudocount, bool) or not isinstance(pseudocount, (int, float)) or not pseudocount >= 0):
        raise PlanError(f"{location(source, key + '.pseudocount')}: expected 'half_min' or a non-negative number, got {pseudocount!r}")
    if transform in ("clr", "log") and pseudocount == 0:
        raise PlanError(
            f"{location(source, key + '.pseudocount')}: the {transform} transform needs a positive pseudocount (zeros have no logarithm)"
        )
    within = raw.get("prevalence_within", base.prevalence_within)
    if within not in PREVALENCE_WITHIN:
        raise PlanError(f"{location(source, key + '.prevalence_within')}: expected one of {', '.join(PREVALENCE_WITHIN)}, got {within!r}")
    order = raw.get("filter", base.filter)
    if order not in FILTER_ORDERS:
        raise PlanError(f"{location(source, key + '.filter')}: expected one of {', '.join(FILTER_ORDERS)}, got {order!r}")
    reference = raw.get("clr_reference", base.clr_reference)
    if reference is not None and (not isinstance(reference, str) or not reference.strip()):
        raise PlanError(f"{location(source, key + '.clr_reference')}: expected the name of a layer of the plan, got {reference!r}")
    return Preprocess(
        float(min_prevalence),
        str(transform),
        pseudocount if pseudocount == "half_min" else float(pseudocount),
        str(within),
        str(order),
        reference,
    )


def resolve_clr_references(source: Path, raw_layers: dict, layers: tuple[LayerSpec, ...]) -> tuple[LayerSpec, ...]:
    """Check every layer's ``preprocess.clr_reference`` against the plan's layers; a layer naming itself is stored as None.

    The reference must be a layer of the plan with transform ``clr`` whose own CLR uses its own features (no chains),
    and the layer naming it must have transform ``clr`` too. Errors name the layer's key (or the top-level
    ``preprocess.clr_reference`` the layer inherited).
    """
    by_name = {layer.name: layer for layer in layers}
    resolved = []
    for layer in layers:
        reference = layer.preprocess.clr_reference
        if reference is None or reference == layer.name:
            resolved.append(replace(layer, preprocess=replace(layer.preprocess, clr_reference=None)))
            continue
        own = isinstance(raw_layers.get(layer.name), dict) and "clr_reference" in (raw_layers[layer.name].get("preprocess") or {})
        key = location(source, f"data.layers.{layer.name}.preprocess.clr_reference" if own else "preprocess.clr_reference")
        if reference not in by_name:
            hint = did_you_mean(reference, tuple(by_name))
            raise PlanError(f"{key}: no layer called '{reference}' in the plan.{hint} Layers: {', '.join(by_name)}.")
        if layer.preprocess.transform != "clr":
            raise PlanError(
                f"{key}: layer '{layer.name}' has transform '{layer.preprocess.transform}'; a CLR reference applies to transform clr only"
            )
        target = by_name[reference]
        if target.preprocess.transform != "clr":
            raise PlanError(
                f"{key}: the reference layer '{reference}' has transform '{target.preprocess.transform}'; "
                "it must have transform clr (its per-sample mean log is the denominator)"
            )
        if target.preprocess.clr_reference not in (None, reference):
            raise PlanError(
                f"{key}: the reference layer '{reference}' itself takes its CLR denominator from "
                f"'{target.preprocess.clr_reference}'; a reference layer must use its own features"
            )
        resolved.append(layer)
    return tuple(resolved)


def parse_models(source: Path, key: str, raw: Any) -> tuple[str, ...]:
    """``models``: one name or a list of :data:`MODELS`, repeats dropped, order kept."""
    models = name_list(source, key, raw)
    if not models:
        raise PlanError(f"{location(source, key)}: name at least one model ({', '.join(MODELS)})")
    for model in models:
        if model not in MODELS:
            hint = did_you_mean(model, MODELS)
            raise PlanError(f"{location(source, key)}: unknown model '{model}'.{hint} Models: {', '.join(MODELS)}.")
    return tuple(dict.fromkeys(models))


def parse_ols_options(source: Path, model: str, raw: Any, cluster: str | None, fitted: bool) -> OlsOptions:
    """The plan key ``model`` (``lm`` / ``lm_nonzero``) as :class:`OlsOptions`.

    Options of a model no layer fits (``fitted`` False) are refused.
    """
    raw = checked_mapping(source, model, raw if raw is not None else {}, ("se", "reference"))
    se = raw.get("se", "classical")
    if se not in STANDARD_ERRORS:
        raise PlanError(f"{location(source, model + '.se')}: expected one of {', '.join(STANDARD_ERRORS)}, got {se!r}")
    if se == "cluster" and cluster is None:
        raise PlanError(
            f"{location(source, model + '.se')}: cluster-robust standard errors need 'cluster: <metadata column>' "
            "naming the groups (families, households) whose members are correlated"
        )
    reference = raw.get("reference", "t")
    if reference not in REFERENCES:
        raise PlanError(f"{location(source, model + '.reference')}: expected one of {', '.join(REFERENCES)}, got {reference!r}")
    if "reference" in raw and se != "cluster":
        raise PlanError(
            f"{location(source, model + '.reference')}: applies to cluster-robust standard errors only ('{model}: {{se: cluster}}'); "
            "classical OLS p-values come from Student's t with n - rank degrees of freedom"
        )
    if raw and not fitted:
        raise PlanError(f"{location(source, model)}: options for model '{model}', which no layer fits (add it to 'models')")
    return OlsOptions(str(se), str(reference))


def parse_threshold(source: Path, key: str, raw: Any) -> float:
    """``presence_threshold``: a non-negative number (a feature is present where its value is above it)."""
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not raw >= 0:
        raise PlanError(
            f"{location(source, key)}: expected a non-negative number (a feature is present where its value is above it), got {raw!r}"
        )
    return float(raw)


def _check_layer_name(source: Path, key: str, name: object) -> None:
    """Refuse a layer name that could not name files inside the output folder.

    A layer's name labels the files a run writes for it (its converted store in the run's cache); a plan may come
    from another site, so a name such as ``../../x`` must not reach outside the folder the user gave.
    """
    text = str(name)
    if not text or text.startswith(".") or any(c in "/\\" or ord(c) < 32 for c in text):
        raise PlanError(
            f"{location(source, key)}: a layer name may not be empty, start with '.', or hold '/', '\\' or control "
            f"characters (it labels files in the output folder), got {text!r}"
        )


def parse_layers(
    source: Path, raw: Any, preprocess: Preprocess, models: tuple[str, ...], threshold: float, allow_outside: bool = False
) -> tuple[LayerSpec, ...]:
    """``data.layers``: layer name -> path or mapping, as :class:`LayerSpec` (paths resolved; top-level settings as defaults)."""
    if not isinstance(raw, dict) or not raw:
        raise PlanError(f"{location(source, 'data.layers')}: expected a mapping of layer name to file, with at least one layer")
    layers = []
    for name, value in raw.items():
        key = f"data.layers.{name}"
        _check_layer_name(source, key, name)
        if isinstance(value, str):
            value = {"path": value}
        value = checked_mapping(
            source,
            key,
            value,
            (
                "path",
                "format",
                "rank",
                "preprocess",
                "models",
                "presence_threshold",
                "stratified",
                "columns",
                "missing",
                "h5ad_layer",
                "store_layer",
            ),
            required=("path",),
        )
        fmt = value.get("format", "auto")
        if fmt not in LAYER_FORMATS:
            raise PlanError(f"{location(source, key + '.format')}: expected one of {', '.join(LAYER_FORMATS)}, got {fmt!r}")
        rank = value.get("rank", "species")
        if rank not in RANK_PREFIXES:
            raise PlanError(f"{location(source, key + '.rank')}: expected one of {', '.join(RANK_PREFIXES)}, got {rank!r}")
        layer_pre = parse_preprocess(source, key + ".preprocess", value.get("preprocess", {}), preprocess)
        path = plan_path(source, key + ".path", value["path"], allow_outside)
        layer_models = parse_models(source, key + ".models", value["models"]) if "models" in value else models
        layer_threshold = (
            parse_threshold(source, key + ".presence_threshold", value["presence_threshold"])
            if "presence_threshold" in value
            else threshold
        )
        stratified, columns, missing = _parse_read_options(source, key, value, fmt)
        h5ad_layer = _parse_h5ad_layer(source, key, value, fmt, path)
        store_layer = _parse_store_layer(source, key, value, fmt)
        layers.append(
            LayerSpec(
                str(name),
                path,
                fmt,
                rank,
                layer_pre,
                layer_models,
                layer_threshold,
                stratified,
                columns,
                missing,
                h5ad_layer,
                rank_given="rank" in value,
                store_layer=store_layer,
            )
        )
    return tuple(layers)


def _parse_read_options(source: Path, key: str, value: dict, fmt: str) -> tuple[bool, tuple[str, str, str] | None, str]:
    """A layer's reader keys: ``stratified`` (HUMAnN), ``columns`` and ``missing`` (long tables), each refused for another format.

    With ``format: auto`` the format is known only once the file is read: ``stratified``
    and ``missing`` are then checked against the detected format; ``columns`` needs ``format: long``.
    """
    stratified = value.get("stratified", False)
    if not isinstance(stratified, bool):
        raise PlanError(f"{location(source, key + '.stratified')}: expected true or false, got {stratified!r}")
    if "stratified" in value and fmt not in ("auto", "humann"):
        raise PlanError(f"{location(source, key + '.stratified')}: applies to HUMAnN tables (format: humann), not to format '{fmt}'")
    columns = None
    if "columns" in value:
        if fmt != "long":
            raise PlanError(
                f"{location(source, key + '.columns')}: applies to long tables only; set 'format: long' (the format is '{fmt}')"
            )
        raw = checked_mapping(source, key + ".columns", value["columns"], ("sample", "feature", "value"))
        names = {part: nonempty_string(source, f"{key}.columns.{part}", raw.get(part, default)) for part, default in LONG_DEFAULTS}
        if len(set(names.values())) < 3:
            raise PlanError(f"{location(source, key + '.columns')}: sample, feature and value must be three different columns, got {raw!r}")
        columns = (names["sample"], names["feature"], names["value"])
    missing = value.get("missing", "zero")
    if missing not in LONG_MISSING:
        raise PlanError(f"{location(source, key + '.missing')}: expected one of {', '.join(LONG_MISSING)}, got {missing!r}")
    if "missing" in value and fmt not in ("auto", "long"):
        raise PlanError(f"{location(source, key + '.missing')}: applies to long tables (format: long), not to format '{fmt}'")
    return stratified, columns, str(missing)


def _parse_h5ad_layer(source: Path, key: str, value: dict, fmt: str, path: Path) -> str | None:
    """``h5ad_layer``: the AnnData layer read instead of ``X``; only for an .h5ad file (``format: h5ad``, or ``auto`` and a .h5ad name)."""
    if "h5ad_layer" not in value:
        return None
    name = nonempty_string(source, key + ".h5ad_layer", value["h5ad_layer"])
    if fmt != "h5ad" and not (fmt == "auto" and path.name.lower().endswith(".h5ad")):
        raise PlanError(
            f"{location(source, key + '.h5ad_layer')}: applies to AnnData .h5ad files (format: h5ad), not to format '{fmt}' ({path.name})"
        )
    if "/" in name:
        raise PlanError(f"{location(source, key + '.h5ad_layer')}: a layer name, without '/', got {name!r}")
    return name


def _parse_store_layer(source: Path, key: str, value: dict, fmt: str) -> str | None:
    """``store_layer``: the layer read from a store holding several (default: the plan's layer name); only for stores."""
    if "store_layer" not in value:
        return None
    name = nonempty_string(source, key + ".store_layer", value["store_layer"])
    if fmt not in ("auto", "zarr"):
        raise PlanError(
            f"{location(source, key + '.store_layer')}: applies to stores made by 'ingest --layer' (format: zarr), not to format '{fmt}'"
        )
    if not STORE_LAYER_NAME.fullmatch(name):
        raise PlanError(f"{location(source, key + '.store_layer')}: a layer name (letters, digits, '_', '-', '.'; no '/'), got {name!r}")
    return name


#: What names a layer of a store holding several (a folder name: no separators, no hidden folders, as temporary
#: layers are hidden); io.store checks ``ingest --layer`` by it too.
STORE_LAYER_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")

#: The columns of a long table when ``columns`` does not name them.
LONG_DEFAULTS = (("sample", "sample_id"), ("feature", "feature"), ("value", "value"))


def parse_exposures(source: Path, raw: Any) -> tuple[ExposureSpec, ...]:
    """``exposures``: name -> ``cases``/``controls`` queries (parsed, never run here) or a ``column``, as :class:`ExposureSpec`."""
    if not isinstance(raw, dict) or not raw:
        raise PlanError(
            f"{location(source, 'exposures')}: expected a mapping of exposure name to its definition, with at least one exposure"
        )
    exposures = []
    for name, value in raw.items():
        key = f"exposures.{name}"
        value = checked_mapping(source, key, value, ("cases", "controls", "column", "categorical", "reference"))
        categorical = value.get("categorical", False)
        if not isinstance(categorical, bool):
            raise PlanError(f"{location(source, key + '.categorical')}: expected true or false, got {categorical!r}")
        if (categorical or "reference" in value) and "column" not in value:
            raise PlanError(
                f"{location(source, key)}: 'categorical' and 'reference' apply to a 'column' exposure, not to cases/controls queries"
            )
        if "reference" in value and not categorical:
            raise PlanError(f"{location(source, key + '.reference')}: a reference level needs 'categorical: true'")
        if "column" in value:
            if "cases" in value or "controls" in value:
                raise PlanError(f"{location(source, key)}: give either 'column' or 'cases' and 'controls', not both")
            reference = str(value["reference"]) if value.get("reference") is not None else None
            exposures.append(
                ExposureSpec(
                    str(name),
                    column=nonempty_string(source, key + ".column", value["column"]),
                    categorical=categorical,
                    reference=reference,
                )
            )
        elif "cases" in value and "controls" in value:
            queries = {part: nonempty_string(source, f"{key}.{part}", value[part]) for part in ("cases", "controls")}
            for part, query in queries.items():
                # Refused here, before any file is read: a plan is data, and a query outside the language never runs.
                parse_query(query, location(source, f"{key}.{part}"))
            exposures.append(ExposureSpec(str(name), cases=queries["cases"], controls=queries["controls"]))
        else:
            raise PlanError(f"{location(source, key)}: needs both 'cases' and 'controls' queries, or a 'column'")
    return tuple(exposures)


def parse_reference(source: Path, raw: Any, categorical: tuple[str, ...]) -> dict[str, str]:
    """``covariates.reference``: column -> reference level, for columns of ``covariates.categorical``.

    Levels are compared as text (metadata values are read as text for
    categorical covariates), so ``site: 2`` names the level ``"2"``.
    Whether the level occurs is checked against the metadata when it is loaded.
    """
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise PlanError(
            f"{location(source, 'covariates.reference')}: expected a mapping of categorical covariate to its reference level (e.g. {{sex: "
            f"female}}), got {raw!r}"
        )
    reference = {}
    for column, level in raw.items():
        key = f"covariates.reference.{column}"
        if column not in categorical:
            listed = ", ".join(categorical) if categorical else "none"
            raise PlanError(
                f"{location(source, key)}: '{column}' is not listed in covariates.categorical (listed: {listed}); "
                "a reference level applies to a categorical covariate only"
            )
        if isinstance(level, bool):
            # YAML reads unquoted yes/no/true/false as booleans.
            raise PlanError(f'{location(source, key)}: got {level!r}; quote the level as it is written in the metadata (e.g. "no")')
        if isinstance(level, (int, float)):
            level = str(level)
        reference[str(column)] = nonempty_string(source, key, level)
    return reference


def expand_adjustments(source: Path, raw: Any) -> dict[str, tuple[str, ...]]:
    """``adjustments``: set name -> metadata columns in order, other sets named in a set expanded (cycles refused)."""
    if not isinstance(raw, dict) or not raw:
        raise PlanError(f"{location(source, 'adjustments')}: expected a mapping of set name to a list of covariates or set names")
    sets = {str(name): name_list(source, f"adjustments.{name}", value if value is not None else []) for name, value in raw.items()}
    expanded: dict[str, tuple[str, ...]] = {}

    def expand(name: str, trail: tuple[str, ...]) -> tuple[str, ...]:
        if name in trail:
            cycle = " -> ".join(trail + (name,))
            raise PlanError(f"{location(source, 'adjustments.' + name)}: adjustment sets name each other in a cycle ({cycle})")
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


def parse_fdr(source: Path, raw: Any) -> FdrSpec:
    """``fdr``: method (``bh`` only), families (``by``, columns of :data:`FDR_BY_COLUMNS`) and ``alpha`` in (0, 1)."""
    raw = checked_mapping(source, "fdr", raw, ("method", "by", "alpha"))
    method = raw.get("method", "bh")
    if method != "bh":
        raise PlanError(f"{location(source, 'fdr.method')}: only 'bh' (Benjamini-Hochberg) is supported, got {method!r}")
    by = name_list(source, "fdr.by", raw.get("by", list(FDR_BY_COLUMNS)))
    for column in by:
        if column not in FDR_BY_COLUMNS:
            raise PlanError(
                f"{location(source, 'fdr.by')}: '{column}' is not a results column to group by; use any of {', '.join(FDR_BY_COLUMNS)}"
            )
    alpha = raw.get("alpha", FdrSpec().alpha)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise PlanError(f"{location(source, 'fdr.alpha')}: expected a number between 0 and 1, got {alpha!r}")
    return FdrSpec("bh", by, float(alpha))


def parse_analyses(
    source: Path, raw: Any, plan_exposures: tuple[str, ...], plan_sets: tuple[str, ...], plan_layers: tuple[str, ...]
) -> tuple[AnalysisSelection, ...]:
    """``analyses``: blocks of exposures x adjustments x layers, each name defined in the plan; absent: everything."""
    if raw is None:
        return (AnalysisSelection(plan_exposures, plan_sets, plan_layers),)
    if not isinstance(raw, list) or not raw:
        raise PlanError(f"{location(source, 'analyses')}: expected a list of {{exposures: [...], adjustments: [...]}} blocks")
    selections = []
    for index, block in enumerate(raw):
        key = f"analyses[{index}]"
        block = checked_mapping(source, key, block, ("exposures", "adjustments", "layers"))
        picked = []
        for part, known in (("exposures", plan_exposures), ("adjustments", plan_sets), ("layers", plan_layers)):
            names = name_list(source, f"{key}.{part}", block[part]) if part in block else known
            for name in names:
                if name not in known:
                    raise PlanError(
                        f"{location(source, key + '.' + part)}: '{name}' is not defined under '{part}' (defined: {', '.join(known)})"
                    )
            picked.append(names)
        selections.append(AnalysisSelection(*picked))
    return tuple(selections)


def check_categorical_models(
    source: Path,
    exposures: tuple[ExposureSpec, ...],
    layers: tuple[LayerSpec, ...],
    analyses: tuple[AnalysisSelection, ...],
    cluster: str | None,
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
                            f"{location(source, 'exposures.' + exposure.name + '.categorical')}: the categorical exposure "
                            f"'{exposure.name}' "
                            f"cannot be analysed with model '{model}' (layer '{layer.name}'): its levels are tested jointly by OLS models "
                            f"only ({', '.join(CATEGORICAL_EXPOSURE_MODELS)}). Leave '{model}' out for this exposure (an 'analyses' block "
                            "per layer) or define one cases/controls exposure per level."
                        )
                if cluster is not None:
                    raise PlanError(
                        f"{location(source, 'exposures.' + exposure.name + '.categorical')}: the categorical exposure '{exposure.name}' "
                        f"cannot be combined with 'cluster: {cluster}': its joint F test assumes independent participants "
                        "(no cluster-robust version yet)"
                    )


def check_lmm_cluster(source: Path, layers: tuple[LayerSpec, ...], cluster: str | None) -> None:
    """Model ``lmm`` needs the plan's ``cluster`` column (its random intercept's groups)."""
    if cluster is None:
        for layer in layers:
            if "lmm" in layer.models:
                raise PlanError(
                    f"{location(source, 'models')}: model 'lmm' (layer '{layer.name}') needs 'cluster: <metadata column>' "
                    "naming the groups (families, households) that get a random intercept"
                )


def parse_model_rules(source: Path, raw: dict[str, Any]) -> tuple[int, int, bool, str]:
    """The top-level rules of which models run and get estimates.

    Parameters
    ----------
    source
        The plan file (named in errors).
    raw
        The plan's top-level mapping.

    Returns
    -------
    tuple
        ``min_cases`` (default 10), ``min_carriers`` (3), ``carrier_cells``
        (False) and ``on_constant_covariate`` (``"drop"``), checked.
    """
    min_cases = raw.get("min_cases", 10)
    if isinstance(min_cases, bool) or not isinstance(min_cases, int) or min_cases < 1:
        raise PlanError(f"{location(source, 'min_cases')}: expected a positive whole number, got {min_cases!r}")
    min_carriers = raw.get("min_carriers", 3)
    if isinstance(min_carriers, bool) or not isinstance(min_carriers, int) or min_carriers < 0:
        raise PlanError(
            f"{location(source, 'min_carriers')}: expected a whole number of participants (0 turns the rule off), got {min_carriers!r}"
        )
    carrier_cells = raw.get("carrier_cells", False)
    if not isinstance(carrier_cells, bool):
        raise PlanError(f"{location(source, 'carrier_cells')}: expected true or false, got {carrier_cells!r}")
    on_constant = raw.get("on_constant_covariate", "drop")
    if on_constant not in ON_CONSTANT_COVARIATE:
        raise PlanError(
            f"{location(source, 'on_constant_covariate')}: expected one of {', '.join(ON_CONSTANT_COVARIATE)}, got {on_constant!r}"
        )
    return min_cases, min_carriers, carrier_cells, on_constant
