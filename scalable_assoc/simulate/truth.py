"""The planted truth: ``truth.tsv`` rows from the planted effects and a cohort's case mix.

Each plan exposure contrasts cases with controls; ``delta`` is the difference of
their mean term values (disorder terms for disorder exposures, drug terms for drug
exposures), and a feature's truth is ``delta`` times its planted coefficients (see
"What ``truth.tsv`` means" in the :mod:`scalable_assoc.simulate` docstring).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from scalable_assoc.simulate.abundance import LayerParams
from scalable_assoc.simulate.catalogue import GBM_LABELS
from scalable_assoc.simulate.participants import (
    DISORDER_EXPOSURES,
    DISORDER_TERMS,
    DRUG_TERMS,
    PLAN_EXPOSURES,
    TERM_INDEX,
)


@dataclass(frozen=True)
class TruthLayer:
    """What ``truth.tsv`` needs of one layer: names, effect matrices, family ICCs."""

    features: list[str]
    abundance: np.ndarray  # (terms, F) effects on the latent log abundance
    presence: np.ndarray  # (terms, F) effects on the log odds of presence
    icc: np.ndarray  # (F,) family intraclass correlation of log abundance


def truth_feature_names(species: dict[str, list[str]], pathways: list[str]) -> dict[str, list[str]]:
    """Feature names per layer as ``truth.tsv`` writes them.

    Parameters
    ----------
    species
        The species catalogue (``"species"``: names without ``s__``).
    pathways
        The pathway names.

    Returns
    -------
    dict of str to list of str
        ``species`` (``s__Name``), ``pathways`` and ``gbm`` (``MGB001``...), in that order.
    """
    return {"species": ["s__" + s for s in species["species"]], "pathways": pathways, "gbm": list(GBM_LABELS)}


def truth_layers(names: dict[str, list[str]], params: dict[str, LayerParams]) -> dict[str, TruthLayer]:
    """What ``truth.tsv`` needs of each layer's parameters.

    Parameters
    ----------
    names
        Layer -> feature names (as :func:`truth_feature_names` gives them).
    params
        Layer -> its parameters; the result has the same layers in the same order.

    Returns
    -------
    dict of str to TruthLayer
        Abundance effects ``B``, effective presence effects and family ICCs per layer.
    """
    return {layer: TruthLayer(names[layer], p.B, p.presence_truth(), p.icc) for layer, p in params.items()}


def round6(x: np.ndarray) -> np.ndarray:
    """Round to the 6 significant digits written (so the file is the truth, 0 stays 0).

    Parameters
    ----------
    x
        Values, any shape (flattened).

    Returns
    -------
    numpy.ndarray
        Float64 values as ``%.6g`` writes them, ``-0.0`` turned into ``0.0``.
    """
    return np.array([float(f"{v:.6g}") for v in x.tolist()], dtype=np.float64) + 0.0


def exposure_deltas(c: dict[str, np.ndarray], terms: np.ndarray) -> list[tuple[str, list[int], np.ndarray]]:
    """Per plan exposure: the term rows it contrasts and ``delta`` (cases - controls).

    Disorder exposures contrast the disorder terms, drug exposures the drug terms.

    Parameters
    ----------
    c
        Participant-level arrays (column -> values) that define cases and controls.
    terms
        Term matrix ``(n, len(TERMS))`` of the same participants.

    Returns
    -------
    list of (str, list of int, numpy.ndarray)
        ``(exposure, term rows, delta)`` in the order of :data:`PLAN_EXPOSURES`.
    """
    out = []
    for exposure, (case_col, case_val, ctrl_col, ctrl_val) in PLAN_EXPOSURES.items():
        cases = c[case_col] == case_val
        controls = c[ctrl_col] == ctrl_val
        group = DISORDER_TERMS if exposure in DISORDER_EXPOSURES else DRUG_TERMS
        idx = [TERM_INDEX[t] for t in group]
        delta = terms[cases][:, idx].mean(axis=0) - terms[controls][:, idx].mean(axis=0)
        out.append((exposure, idx, delta))
    return out


def truth_frame(c: dict[str, np.ndarray], terms: np.ndarray, layers: dict[str, TruthLayer]) -> pd.DataFrame:
    """``truth.tsv``: one row per (layer, feature, plan exposure).

    With ``delta`` = mean term values over cases - over controls, restricted to the
    disorder terms for disorder exposures and to the drug terms for drug exposures:
    ``abundance_effect = delta @ abundance``, ``presence_effect = delta @ presence``,
    and ``effect`` is ``abundance_effect`` where that is non-zero, else
    ``presence_effect``.  ``family_icc`` repeats the feature's ICC on every row.

    Parameters
    ----------
    c
        Participant-level arrays (column -> values).
    terms
        Term matrix ``(n, len(TERMS))`` of the same participants.
    layers
        Layer name -> its :class:`TruthLayer`, in the order rows are written.

    Returns
    -------
    pandas.DataFrame
        Columns ``layer, feature, exposure, effect, presence_effect, abundance_effect,
        family_icc``; rows by exposure, then layer, then feature.
    """
    frames = []
    for exposure, idx, delta in exposure_deltas(c, terms):
        for layer, tl in layers.items():
            abundance = round6(delta @ tl.abundance[idx])
            presence = round6(delta @ tl.presence[idx])
            frames.append(
                pd.DataFrame(
                    {
                        "layer": layer,
                        "feature": tl.features,
                        "exposure": exposure,
                        "effect": np.where(abundance != 0, abundance, presence),
                        "presence_effect": presence,
                        "abundance_effect": abundance,
                        "family_icc": round6(tl.icc),
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)
