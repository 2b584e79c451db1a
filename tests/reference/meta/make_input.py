"""Write meta_input.tsv: per-cohort estimates and standard errors for the metafor reference.

Run from this folder:  python make_input.py   (then Rscript metafor_reference.R)

41 rows x 4 cohorts, values rounded to 6 significant digits so that R and Python
parse the same decimal numbers to the same doubles. NA marks a missing cohort.

- rows 1-8: homogeneous (cohort deviations a quarter of their se: tau2 = 0)
- rows 9-16: strongly heterogeneous (between-cohort sd 0.5-2 against se 0.05-0.3)
- rows 17-24: moderate heterogeneity (between-cohort sd about the se)
- rows 25-30: three cohorts (the missing one in a different column each time)
- rows 31-35: two cohorts
- rows 36-39: very unequal se (1e-3 to 3 within a row), mixed signs
- row 40: four identical cohorts (same estimate and se)
- row 41: a single cohort
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

K = 4


def _round(x: np.ndarray) -> np.ndarray:
    return np.array([float(f"{value:.6g}") for value in x.ravel()]).reshape(x.shape)


def make_input() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(20240611)
    beta_rows, se_rows = [], []

    def add(beta: np.ndarray, se: np.ndarray) -> None:
        beta_rows.append(beta)
        se_rows.append(se)

    for _ in range(8):
        se = rng.uniform(0.05, 0.3, K)
        add(rng.uniform(-1, 1) + 0.25 * se * rng.standard_normal(K), se)
    for _ in range(8):
        se = rng.uniform(0.05, 0.3, K)
        add(rng.normal(0, 1) + rng.uniform(0.5, 2) * rng.standard_normal(K) + se * rng.standard_normal(K), se)
    for _ in range(8):
        se = rng.uniform(0.05, 0.3, K)
        add(rng.normal(0, 0.5) + rng.uniform(0.05, 0.3) * rng.standard_normal(K) + se * rng.standard_normal(K), se)
    for row in range(6):
        se = rng.uniform(0.05, 0.4, K)
        beta = rng.normal(0, 0.5) + rng.uniform(0.0, 0.8) * rng.standard_normal(K) + se * rng.standard_normal(K)
        beta[row % K] = se[row % K] = np.nan
        add(beta, se)
    for _ in range(5):
        se = rng.uniform(0.05, 0.4, K)
        beta = rng.normal(0, 0.5) + rng.uniform(0.0, 0.8) * rng.standard_normal(K) + se * rng.standard_normal(K)
        missing = rng.choice(K, 2, replace=False)
        beta[missing] = se[missing] = np.nan
        add(beta, se)
    for _ in range(4):
        se = 10.0 ** rng.uniform(-3, 0.5, K)
        add(rng.normal(0, 0.3) + rng.uniform(0.0, 0.5) * rng.standard_normal(K) + se * rng.standard_normal(K), se)
    add(np.full(K, -0.4321), np.full(K, 0.12))
    single = np.full(K, np.nan)
    single_se = single.copy()
    single[2], single_se[2] = 0.731, 0.205
    add(single, single_se)
    return _round(np.array(beta_rows)), _round(np.array(se_rows))


def main() -> None:
    beta, se = make_input()
    header = ["row"] + [f"beta_{j + 1}" for j in range(K)] + [f"se_{j + 1}" for j in range(K)]
    lines = ["\t".join(header)]
    for row in range(beta.shape[0]):
        cells = [repr(float(x)) if np.isfinite(x) else "NA" for x in np.concatenate([beta[row], se[row]])]
        lines.append("\t".join([str(row + 1), *cells]))
    (Path(__file__).parent / "meta_input.tsv").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
