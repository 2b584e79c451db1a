"""scalable_assoc: microbiome feature x phenotype association studies at biobank scale.

Thousands of per-feature regressions are computed as a few matrix operations per
block of features, fanned out as Dask tasks over a feature-chunked Zarr store.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("scalable_assoc")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
