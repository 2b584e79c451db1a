"""Per-feature plots of a run's top associations (as MaAsLin2's per-feature plots), and the joint presence/abundance figure.

For each layer x model, the ``top`` associations with the smallest q among those
with q < alpha under the base adjustment set are drawn as small multiples: the
values the model saw (the layer's transform of the raw abundance, or presence)
by case/control (box + points), by level, or against a numeric exposure
(scatter + least-squares line); for ``prevalence`` rows the share present per group.

The values are rebuilt from the run's own files, never refitted: the raw
abundance of those few features read from the layer's store, the layer's saved
filter (pseudocount, per-sample sums over the kept features) and each analysis'
saved design (its participants), through :mod:`scalable_assoc.io.run_cache`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from scalable_assoc.io.metadata import complete_rows, exposure_values, load_metadata, reconcile_samples
from scalable_assoc.io.run_cache import WORK_DIR, FilterFile, design_rows, filter_path, layer_cache_token, read_filter_file, samples_digest
from scalable_assoc.io.store import AbundanceStore, open_store
from scalable_assoc.report.figures import DrawnFigure, RenderedFigure, file_stem, render_drawn, short_label
from scalable_assoc.report.rendering import TITLE_Y
from scalable_assoc.results.run_outputs import RunOutputs
from scalable_assoc.results.summary import base_sets, sets_run
from scalable_assoc.stats.transforms import apply_transform, nonzero_values, presence_indicator

logger = logging.getLogger(__name__)

#: Associations drawn per layer x model by default.
FEATURES_TOP = 10
#: What each model's rows were fitted on.
MODEL_VIEWS = {"lm": "transformed", "lmm": "transformed", "lm_nonzero": "nonzero", "prevalence": "presence"}

_CASE, _CONTROL, _MUTED = "#c0392b", "#2c7fb8", "#9aa5b1"


@dataclass(frozen=True)
class FeaturePanel:
    """One plotted association: the values its model saw for its participants.

    ``sample_ids`` ``(n,)`` the participants; ``values`` ``(n,)`` the model's view of
    the feature (NaN where missing or, for ``lm_nonzero``, absent); ``exposure``
    ``(n,)``: 0/1 for a binary exposure, level codes into ``levels`` for a categorical
    one, else the numeric values.
    """

    layer: str
    model: str
    feature: str
    exposure_name: str
    adjustment: str
    beta: float
    p: float
    q: float
    view: str
    transform: str
    sample_ids: tuple[str, ...]
    values: np.ndarray
    exposure: np.ndarray
    binary: bool
    levels: tuple[str, ...]
    #: True: the analysis' saved design gave its participants; False: rebuilt (exposure and covariates non-missing)
    exact_participants: bool


@dataclass(frozen=True)
class FeaturePanels:
    """Per layer x model, its panels (in order of q), and notes for those that could not be drawn."""

    panels: dict[tuple[str, str], list[FeaturePanel]]
    notes: dict[tuple[str, str], str]


def top_associations(results: pd.DataFrame, adjustment_order: list[str], alpha: float, top: int) -> pd.DataFrame:
    """The ``top`` rows per layer x model with the smallest q among those with q < alpha under the base adjustment set."""
    results = results.reset_index(drop=True)
    base = results["adjustment"].to_numpy(dtype=object) == base_sets(results, sets_run(results, adjustment_order))
    chosen = results[base & results["q"].lt(alpha).fillna(False).to_numpy(dtype=bool)]
    chosen = chosen.sort_values(["q", "p"], kind="stable")
    return chosen.groupby(["layer", "model"], sort=False).head(top)


class _Layer:
    """What one layer's panels are rebuilt from: its store, used samples, saved filter and metadata rows."""

    def __init__(self, run: RunOutputs, metadata: pd.DataFrame, layer: str) -> None:
        manifest, plan = run.manifest, run.plan
        self.spec = plan.layer(layer)
        store_path = Path(manifest["inputs"][f"layer:{layer}"]["store"])
        if not store_path.is_dir():
            raise FileNotFoundError(f"the store of layer '{layer}' ({store_path}) is gone")
        self.store: AbundanceStore = open_store(store_path)
        intersect = bool(manifest.get("intersect_samples")) or plan.sample_mismatch == "intersect"
        self.positions, _ = reconcile_samples(layer, self.spec.path, self.store.sample_ids, metadata, plan.metadata, intersect)
        self.used_ids = [self.store.sample_ids[i] for i in self.positions]
        self.metadata_rows = metadata.index.get_indexer(self.used_ids)
        self.filter = self._filter(run, layer)
        self._chunks: dict[int, np.ndarray] = {}  # store chunk index -> its raw block (n_used, chunk features)

    def _filter(self, run: RunOutputs, layer: str) -> FilterFile:
        folder = run.run_dir / WORK_DIR / "filters"
        info = run.manifest["inputs"]
        listed = (run.manifest.get("layers", {}).get(layer) or {}).get("feature_list_used")
        digest = samples_digest(self.positions)
        if not listed:
            token = layer_cache_token(
                run.plan.rows_hash(), info["metadata"]["sha256"], info[f"layer:{layer}"]["sha256"], layer, self.store.chunk_features, ""
            )
            path = filter_path(folder, token, digest)
            if path.is_file():
                return read_filter_file(path)
        # A feature list's token needs the list matched again: take the one filter of these samples that fits the manifest.
        expected = run.manifest["layers"][layer]
        for path in sorted(folder.glob(f"filter-*-{digest}.npz")):
            saved = read_filter_file(path)
            if saved.kept.size == self.store.n_features and int(saved.kept.sum()) == expected["features_kept"]:
                if saved.pseudocount == expected["pseudocount"]:
                    return saved
        raise FileNotFoundError(f"the saved filter of layer '{layer}' is not in {folder}")

    def _chunk(self, index: int) -> np.ndarray:
        # Reading one feature decompresses its whole chunk anyway: top features sharing a chunk read it once.
        if index not in self._chunks:
            start = index * self.store.chunk_features
            self._chunks[index] = self.store.read_block(
                start, min(start + self.store.chunk_features, self.store.n_features), self.positions
            )
        return self._chunks[index]

    def view(self, feature: str, view: str) -> np.ndarray:
        """The model's view ``(n_used,)`` of one feature over the layer's used samples (reads that feature's store chunk only, once)."""
        j = self.store.feature_ids.index(feature)
        raw = self._chunk(j // self.store.chunk_features)
        first = (j // self.store.chunk_features) * self.store.chunk_features
        raw = raw[:, j - first : j - first + 1]
        transform, saved = self.spec.preprocess.transform, self.filter
        if view == "presence":
            return presence_indicator(raw, self.spec.presence_threshold)[:, 0]
        if view == "nonzero":
            totals = saved.nonzero_totals if transform == "clr" else saved.sample_totals
            total, count = totals if totals is not None else (None, None)
            return apply_transform(nonzero_values(raw, self.spec.presence_threshold), transform, 0.0, total, count)[:, 0]
        total, count = saved.sample_totals if saved.sample_totals is not None else (None, None)
        return apply_transform(raw, transform, saved.pseudocount, total, count)[:, 0]


def feature_panels(run: RunOutputs, top: int = FEATURES_TOP) -> FeaturePanels:
    """The values behind every per-feature panel of a run (nothing drawn).

    Parameters
    ----------
    run
        The run's outputs (:func:`scalable_assoc.results.run_outputs.read_run`).
    top
        Associations per layer x model.

    Returns
    -------
    FeaturePanels
        Panels per layer x model; a note instead where a layer's store or saved filter is gone.
    """
    plan, manifest = run.plan, run.manifest
    chosen = top_associations(run.results, list(plan.adjustments), plan.fdr.alpha, top)
    panels: dict[tuple[str, str], list[FeaturePanel]] = {}
    notes: dict[tuple[str, str], str] = {}
    if not len(chosen):
        return FeaturePanels(panels, notes)
    metadata = load_metadata(plan.metadata, plan.sample_id_column)
    min_cases = (manifest.get("min_cases") or {}).get("used", plan.min_cases)
    specs = {spec.name: spec for spec in plan.exposures}
    analyses = {(a["layer"], a["exposure"], a["adjustment"], a["model"]): a for a in manifest.get("analyses", [])}
    exposures: dict[str, object] = {}
    stored = {spec.name for spec in plan.layers}
    for layer_name, rows in chosen.groupby("layer", sort=False):
        layer_name = str(layer_name)
        if layer_name not in stored:  # rows of no stored layer (alpha diversity, 'alpha:<layer>'): no feature to plot
            continue
        try:
            layer = _Layer(run, metadata, layer_name)
        except (FileNotFoundError, KeyError, OSError) as error:
            for model in dict.fromkeys(rows["model"]):
                notes[(layer_name, str(model))] = f"per-feature plots not drawn: {error}"
            logger.warning("per-feature plots of layer '%s' not drawn: %s", layer_name, error)
            continue
        for row in rows.itertuples(index=False):
            model, exposure_name, adjustment = str(row.model), str(row.exposure), str(row.adjustment)
            if exposure_name not in exposures:
                exposures[exposure_name] = exposure_values(metadata, plan.metadata, specs[exposure_name], min_cases)
            exposure = exposures[exposure_name]
            values_all = exposure.values[layer.metadata_rows]  # type: ignore[attr-defined]
            analysis = analyses.get((layer_name, exposure_name, adjustment, model), {})
            design = run.run_dir / WORK_DIR / "designs" / f"{analysis.get('design')}.npz"
            if analysis.get("design") and design.is_file():
                participants, exact = design_rows(design), True
            else:  # the design is gone: every participant with the exposure and the set's covariates non-missing
                columns = tuple(c for c in plan.adjustments[adjustment] if c in metadata.columns)
                aligned = metadata.iloc[layer.metadata_rows]
                participants, exact = np.flatnonzero(~np.isnan(values_all) & complete_rows(aligned, columns)), False
            view = MODEL_VIEWS.get(model, "transformed")
            panels.setdefault((layer_name, model), []).append(
                FeaturePanel(
                    layer_name,
                    model,
                    str(row.feature),
                    exposure_name,
                    adjustment,
                    float(row.beta),
                    float(row.p),
                    float(row.q),
                    view,
                    layer.spec.preprocess.transform,
                    tuple(layer.used_ids[i] for i in participants),
                    layer.view(str(row.feature), view)[participants],
                    values_all[participants],
                    bool(exposure.binary),  # type: ignore[attr-defined]
                    tuple(exposure.levels),  # type: ignore[attr-defined]
                    exact,
                )
            )
    return FeaturePanels(panels, notes)


def _axis_label(panel: FeaturePanel) -> str:
    if panel.view == "presence":
        return "share present"
    name = panel.transform.upper() if panel.transform != "none" else "abundance"
    return f"{name} (present only)" if panel.view == "nonzero" else name


def _draw_panel(axes: Axes, panel: FeaturePanel) -> None:
    y, x = panel.values, panel.exposure
    shown = ~np.isnan(y) & ~np.isnan(x)
    title = f"{short_label(panel.feature, 30)}\n{panel.exposure_name}: \u03b2 = {panel.beta:.3g}, p = {panel.p:.2g}, q = {panel.q:.2g}"
    axes.set_title(title, fontsize=7, y=TITLE_Y)
    axes.tick_params(labelsize=6)
    axes.ticklabel_format(axis="y", useOffset=False)  # no offset text above the axes, where the title is
    groups: list[tuple[str, np.ndarray]] = []
    if panel.binary:
        groups = [("control", shown & (x == 0)), ("case", shown & (x == 1))]
    elif panel.levels:
        groups = [(level, shown & (x == k)) for k, level in enumerate(panel.levels)]
    if groups:
        labels = [f"{name}\n(n={int(mask.sum())})" for name, mask in groups]
        if panel.view == "presence":
            shares = [float(y[mask].mean()) if mask.any() else np.nan for _, mask in groups]
            colours = [_CONTROL, _CASE] if panel.binary else [f"C{k}" for k in range(len(groups))]
            axes.bar(range(len(groups)), np.nan_to_num(shares), color=colours)
            axes.set_ylim(0, 1.05)
        else:
            data = [y[mask] for _, mask in groups]
            axes.boxplot(data, positions=range(len(groups)), widths=0.5, showfliers=False, medianprops={"color": "black"})
            jitter = np.random.default_rng(0)
            for k, values in enumerate(data):
                axes.scatter(
                    k + jitter.uniform(-0.18, 0.18, values.size), values, s=3, alpha=0.5, color=_MUTED, linewidths=0, rasterized=True
                )
        axes.set_xticks(range(len(groups)), labels)
    else:
        axes.scatter(x[shown], y[shown], s=3, alpha=0.5, color=_MUTED, linewidths=0, rasterized=True)
        if shown.sum() > 1 and np.ptp(x[shown]) > 0:
            slope, intercept = np.polyfit(x[shown], y[shown], 1)  # a guide for the eye, not the model's adjusted beta
            grid = np.linspace(float(x[shown].min()), float(x[shown].max()), 2)
            axes.plot(grid, intercept + slope * grid, color=_CASE, linewidth=1)
        axes.set_xlabel(panel.exposure_name, fontsize=7)
    axes.set_ylabel(_axis_label(panel), fontsize=7)


def feature_figure(panels: list[FeaturePanel]) -> Figure:
    """The panels of one layer x model as small multiples (four per row)."""
    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    width, height = 3.0 * columns, 2.9 * rows + 0.4
    figure = Figure(figsize=(width, height))
    # Fixed margins in inches (two-line titles, two-line group labels) instead of constrained
    # layout, whose solving over many panels cost about as much as drawing them.
    figure.subplots_adjust(
        left=0.6 / width, right=1 - 0.15 / width, bottom=0.55 / height, top=1 - 0.75 / height, wspace=0.7 / 2.3, hspace=1.05 / 1.85
    )
    for k, panel in enumerate(panels):
        _draw_panel(figure.add_subplot(rows, columns, k + 1), panel)
    return figure


def feature_caption(panels: list[FeaturePanel], label: str) -> str:
    """The figure's title: what is drawn, and how the participants were found."""
    exact = all(p.exact_participants for p in panels)
    who = (
        "each analysis' participants"
        if exact
        else "participants with the exposure and the adjustment set's covariates non-missing (an analysis' saved design was missing)"
    )
    return f"top {len(panels)} associations under the base adjustment set, the values each model saw, for {who}: {label}"


def joint_figure(joint: pd.DataFrame, adjustment_order: list[str], alpha: float, top: int) -> Figure:
    """-log10 p_joint (presence or abundance, MaAsLin3's joint p) of the ``top`` features by q_joint, base set, features x exposures."""
    base = joint[joint["adjustment"] == next((a for a in adjustment_order if a in set(joint["adjustment"])), None)]
    significant = base[base["q_joint"].lt(alpha).fillna(False).to_numpy(dtype=bool)]
    features = list(significant.groupby("feature", sort=False)["q_joint"].min().sort_values(kind="stable").head(top).index)
    exposures = list(dict.fromkeys(base["exposure"]))
    figure = Figure(figsize=(max(4.0, 1.0 + 0.7 * len(exposures)), max(2.5, 1.2 + 0.28 * len(features))), layout="constrained")
    if not features:
        axes = figure.add_subplot()
        axes.set_axis_off()
        axes.text(0.5, 0.5, f"no joint association with q_joint < {alpha:g}", ha="center", va="center")
        return figure
    cells = base[base["feature"].isin(features)]
    p = cells.pivot_table(index="feature", columns="exposure", values="p_joint", aggfunc="first").reindex(index=features, columns=exposures)
    q = cells.pivot_table(index="feature", columns="exposure", values="q_joint", aggfunc="first").reindex(index=features, columns=exposures)
    values = -np.log10(np.clip(p.to_numpy(dtype=float), 1e-300, 1.0))
    axes = figure.add_subplot()
    image = axes.imshow(np.ma.masked_invalid(values), aspect="auto", cmap="viridis")
    marked = np.nan_to_num(q.to_numpy(dtype=float), nan=1.0) < alpha
    for i, j in zip(*np.nonzero(marked), strict=True):
        axes.text(j, i, "*", ha="center", va="center", fontsize=8, color="white")
    axes.set_xticks(range(len(exposures)), exposures, rotation=45, ha="right")
    axes.set_yticks(range(len(features)), [short_label(f) for f in features], fontsize=7)
    figure.colorbar(image, ax=axes, label="-log10 p_joint", shrink=0.8)
    axes.set_title(f"* q_joint < {alpha:g}", fontsize=8, loc="left", y=TITLE_Y)
    return figure


def draw_feature_figures(run: RunOutputs, top: int = FEATURES_TOP) -> tuple[list[DrawnFigure], dict[tuple[str, str], str]]:
    """The per-feature figures (kind ``features``) of every layer x model, and the joint figure (model ``joint``) of every layer
    that has ``joint_results.parquet`` rows, drawn but not rendered; with a note per layer x model whose values could not be
    rebuilt (store or filter gone).
    """
    found = feature_panels(run, top)
    several_models = run.results["model"].nunique() > 1
    drawn: list[DrawnFigure] = []
    for (layer, model), panels in found.panels.items():
        label = f"{layer}, {model}" if several_models else layer
        figure = feature_figure(panels)
        figure.suptitle(f"top {len(panels)} associations by q, base adjustment set: {label}", fontsize=9)
        drawn.append(
            DrawnFigure(f"features_{file_stem(layer)}_{file_stem(model)}", "features", layer, model, feature_caption(panels, label), figure)
        )
    joint_path = run.run_dir / "joint_results.parquet"
    if joint_path.is_file():
        joint = pd.read_parquet(joint_path)
        for layer, rows in joint.groupby("layer", sort=False):
            figure = joint_figure(rows, list(run.plan.adjustments), run.plan.fdr.alpha, top)
            title = f"joint presence/abundance p (lm_nonzero and prevalence) under the base adjustment set: {layer}"
            figure.suptitle(title, fontsize=9)
            drawn.append(DrawnFigure(f"joint_{file_stem(layer)}", "joint", str(layer), "joint", title, figure))
    logger.info("drew %d per-feature and joint figures", len(drawn))
    return drawn, found.notes


def run_feature_figures(run: RunOutputs, top: int = FEATURES_TOP) -> tuple[list[RenderedFigure], dict[tuple[str, str], str]]:
    """:func:`draw_feature_figures`, rendered (:func:`scalable_assoc.report.figures.render_drawn`)."""
    drawn, notes = draw_feature_figures(run, top)
    return render_drawn(drawn), notes
