"""What a fit task receives from the client's preparation: shared designs (as files) and resolved analyses.

Here rather than in :mod:`scalable_assoc.engine.prepare`, which re-exports
them, because the workers need these types and :func:`read_design` at every
fit task while prepare needs pandas, zarr and the metadata readers: imported
by the task functions (the workers' fork server imports them as it starts),
prepare's imports cost the server about 0.3 s of CPU on the way to a cold
run's first task, beside the client's conversion of the tables on a 2-core
machine. Imports NumPy and the plan's small types only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scalable_assoc.io.atomic import write_npz
from scalable_assoc.plan.expand import AnalysisKey
from scalable_assoc.plan.schema import OlsOptions


@dataclass(frozen=True)
class DesignInput:
    """A distinct (participant subset, covariate matrix): factorised once, shared by its analyses.

    ``rows`` are positions into the layer's used samples; ``matrix`` is
    ``(len(rows), k)`` with the intercept first; ``clusters`` the ``(len(rows),)``
    cluster codes 0..G-1 when the plan names a cluster column, else None.
    """

    key: str
    rows: np.ndarray
    matrix: np.ndarray
    names: tuple[str, ...]
    clusters: np.ndarray | None = None
    #: ``column[level]`` of each categorical covariate's omitted reference dummy (pooled analyses re-add it)
    references: tuple[str, ...] = ()


@dataclass(frozen=True)
class PreparedAnalysis:
    """One analysis resolved against the metadata of its layer's samples."""

    key: AnalysisKey
    design_key: str
    exposure: np.ndarray  # (len(design rows),), 0/1 for binary exposures
    binary: bool
    covariates: tuple[str, ...]  # metadata columns adjusted for
    left_out: tuple[str, ...]  # adjustment columns identical to the exposure, left out
    n: int
    n_cases: int | None
    n_controls: int | None
    #: a categorical exposure's levels among the design's participants, reference first
    #: (``exposure`` holds codes into them); empty for a binary or numeric exposure
    levels: tuple[str, ...] = ()
    #: adjustment columns constant (one level) among the model's participants, left out
    constant: tuple[str, ...] = ()
    #: rows with fewer participants with (or without) the feature get no estimate (plan min_carriers)
    min_carriers: int = 0
    #: rows whose feature is present in fewer than this fraction of the model's participants get no estimate
    min_prevalence: float = 0.0
    #: min_carriers also applies to each present/absent x case/control cell (plan carrier_cells)
    carrier_cells: bool = False
    #: the plan's options of this analysis' OLS model (lm, lm_nonzero); None for the other models
    ols: OlsOptions | None = None
    #: clusters among the design's participants when the model uses clusters (lmm, se: cluster); else None
    n_clusters: int | None = None

    @property
    def dropped(self) -> tuple[str, ...]:
        """Columns of the adjustment set not in this model: identical to the exposure, or constant."""
        return self.left_out + self.constant


def write_design(folder: Path, design: DesignInput) -> Path:
    """Write a design to ``folder/<key>.npz`` (once: the key is a hash of its content)."""
    path = folder / f"{design.key}.npz"
    if not path.is_file():
        arrays = {"rows": design.rows, "matrix": design.matrix, "names": np.array(design.names, dtype=str)}
        if design.clusters is not None:
            arrays["clusters"] = design.clusters
        if design.references:
            arrays["references"] = np.array(design.references, dtype=str)
        write_npz(path, arrays)
    return path


def read_design(path: Path) -> DesignInput:
    """Read a design written by :func:`write_design`."""
    with np.load(path, allow_pickle=False) as data:
        clusters = data["clusters"] if "clusters" in data.files else None
        references = tuple(str(n) for n in data["references"]) if "references" in data.files else ()
        return DesignInput(path.stem, data["rows"], data["matrix"], tuple(str(n) for n in data["names"]), clusters, references)
