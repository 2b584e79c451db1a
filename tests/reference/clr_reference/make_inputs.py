"""Writes the inputs of clr_reference.R: a small species + pathways study cut from the simulator (run once; outputs committed).

cd tests/reference/clr_reference && PYTHONPATH=../../.. python make_inputs.py && Rscript clr_reference.R
"""

import tempfile
from pathlib import Path

import pandas as pd

from scalable_assoc import simulate_study

here = Path(__file__).parent
with tempfile.TemporaryDirectory() as folder:
    simulate_study(folder, participants=300, n_species=60, n_pathways=40, seed=3, missing_abundance_fraction=0.0, families=False)
    species = pd.read_csv(Path(folder) / "species.tsv", sep="\t", comment="#", index_col=0)
    species = species[species.index.str.contains("s__") & ~species.index.str.contains("t__")]
    species.index = species.index.str.split("|").str[-1]
    pathways = pd.read_csv(Path(folder) / "pathways.tsv", sep="\t", index_col=0)
    metadata = pd.read_csv(Path(folder) / "metadata.tsv", sep="\t")
samples = list(species.columns[:150])
# Samples x features, percent (species: MetaPhlAn's relative abundances) and pathway abundances as simulated.
species.T.loc[samples].iloc[:, :30].rename_axis("sample_id").to_csv(here / "species.tsv", sep="\t", float_format="%.17g")
pathways.loc[samples].iloc[:, :20].rename_axis("sample_id").to_csv(here / "pathways.tsv", sep="\t", float_format="%.17g")
metadata.set_index("sample_id").loc[samples, ["age", "sex", "bmi"]].to_csv(here / "metadata.tsv", sep="\t")
