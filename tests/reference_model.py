"""An independent, deliberately plain re-implementation of one analysis, for tests.

It re-reads the input files with pandas, applies the filter and transform with
pandas operations and fits statsmodels OLS with a formula (patsy treatment
coding for categorical covariates, ``missing="drop"``), one feature at a time.
It shares no code with the package beyond the file formats.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf


def read_layer(path: Path) -> pd.DataFrame:
    """Samples x features frame of a simulated layer (MetaPhlAn species rows or a wide table)."""
    first = path.read_text().splitlines()[0]
    if first.startswith("#mpa"):
        raw = pd.read_csv(path, sep="\t", skiprows=1, index_col=0)
        species = raw[[name.split("|")[-1].startswith("s__") for name in raw.index]]
        species.index = [name.split("|")[-1] for name in species.index]
        return species.T
    return pd.read_csv(path, sep="\t", index_col=0, dtype={0: str})


def transformed_layer(path: Path, min_prevalence: float, transform: str = "clr", features: list[str] | None = None) -> pd.DataFrame:
    """Prevalence filter, half-minimum pseudocount, then CLR/log/none over the kept features.

    With ``features`` (clade names, ``s__...``) the kept features are exactly the
    listed ones the table has (no prevalence filter), and a listed feature the
    table lacks is a column of zeros in the CLR mean (not returned).
    """
    layer = read_layer(path)
    if features is not None:
        present = [f for f in features if f in layer.columns]
        kept = layer[present]
        pseudocount = kept[kept > 0].min().min() / 2
        if transform != "clr":
            raise ValueError("a feature list is checked with CLR only")
        everything = layer.reindex(columns=list(features), fill_value=0.0)
        logged = np.log(everything + pseudocount)
        return logged.sub(logged.mean(axis=1, skipna=True), axis=0)[present]
    prevalence = (layer > 0).sum() / layer.notna().sum()
    kept = layer.loc[:, prevalence >= min_prevalence]
    pseudocount = kept[kept > 0].min().min() / 2
    if transform == "none":
        return kept
    logged = np.log(kept + pseudocount)
    if transform == "log":
        return logged
    return logged.sub(logged.mean(axis=1, skipna=True), axis=0)


def fit_one(data: pd.DataFrame, feature: str, exposure: str, covariates: list[str], categorical: list[str]) -> dict[str, float]:
    """statsmodels OLS of one feature; returns beta, se, t, p, n of the exposure."""
    frame = data[[feature, exposure, *covariates]].rename(columns={feature: "y_feature"})
    terms = [f"C({c})" if c in categorical else c for c in covariates]
    formula = "y_feature ~ " + " + ".join([exposure, *terms])
    fit = smf.ols(formula, data=frame, missing="drop").fit()
    return {
        "beta": fit.params[exposure],
        "se": fit.bse[exposure],
        "t": fit.tvalues[exposure],
        "p": fit.pvalues[exposure],
        "n": int(fit.nobs),
    }
