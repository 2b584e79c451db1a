"""Input and output: abundance tables, the Zarr store, metadata, atomic writes (pandas, pyarrow, zarr)."""
