"""Write the .h5ad fixtures of tests/test_formats_biom_h5ad.py with anndata itself (run from the repository root).

The same 5 samples x 4 features in the three layouts of X that anndata writes: dense,
CSR and CSC. The CSC file's obs/var names are pandas' string dtype (anndata's
'nullable-string-array' encoding), the others plain object strings ('string-array').
"""

from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

#: The values every fixture holds (samples x features); the test compares against the same numbers.
VALUES = np.array([[0.0, 1.5, 0.0, 2.0], [3.25, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [7.0, 0.5, 1.0, 0.0], [0.0, 2.0, 4.0, 8.0]])
SAMPLES = ["S1", "S2", "S3", "S4", "S5"]
FEATURES = ["s__Alpha", "s__Beta", "s__Gamma", "s__Delta"]

#: with_obs.h5ad's obs columns (None: missing) and the pandas dtype each is written with (so each AnnData encoding occurs)
OBS = {
    "age": [30, 41, 52, 63, 74],
    "bmi": [21.5, None, 30.25, 25.0, 19.75],
    "sex": ["F", "M", None, "F", "M"],
    "MDD": [1, 0, None, 1, 0],
    "smoker": [True, False, None, True, False],
    "site": ["north", "south", None, "north", "east"],
    "batch": [3, 3, 7, 7, 3],
}
OBS_DTYPES = {
    "age": "int64",
    "bmi": "float64",
    "sex": "category",
    "MDD": "Int64",
    "smoker": "boolean",
    "site": "string",
    "batch": "category",
}


def main() -> None:
    folder = Path(__file__).parent
    for name, matrix, dtype in [
        ("dense", VALUES.astype(np.float32), object),
        ("csr", sp.csr_matrix(VALUES), object),
        ("csc", sp.csc_matrix(VALUES), "string"),
    ]:
        anndata.settings.allow_write_nullable_strings = dtype == "string"
        obs = pd.DataFrame({"age": [30, 41, 52, 63, 74]}, index=pd.Index(SAMPLES, dtype=dtype))
        var = pd.DataFrame(index=pd.Index(FEATURES, dtype=dtype))
        anndata.AnnData(matrix, obs=obs, var=var).write_h5ad(folder / f"counts_{name}.h5ad")
    # obs as a metadata table: every column encoding a metadata column can have (read by data.metadata: with_obs.h5ad)
    anndata.settings.allow_write_nullable_strings = True
    obs = pd.DataFrame(OBS, index=pd.Index(SAMPLES, dtype=object)).astype(OBS_DTYPES)
    anndata.AnnData(VALUES, obs=obs, var=pd.DataFrame(index=pd.Index(FEATURES, dtype=object))).write_h5ad(folder / "with_obs.h5ad")


if __name__ == "__main__":
    main()
