"""Names of a run's alpha diversity outputs, shared by the engine (which writes them) and the report (which reads them)."""

from __future__ import annotations

#: Prefix of the ``layer`` value of alpha diversity rows: ``alpha:<layer>``.
ALPHA_LAYER_PREFIX = "alpha:"
#: The run's per-sample alpha metrics (output folder): ``sample_id`` and one column ``<layer>:<metric>`` per layer x metric.
ALPHA_VALUES_FILE = "alpha_diversity.parquet"


def alpha_layer_name(layer: str) -> str:
    """The ``layer`` value of a layer's alpha diversity rows."""
    return f"{ALPHA_LAYER_PREFIX}{layer}"


def is_alpha_layer(layer: str) -> bool:
    """True for the ``layer`` value of alpha diversity rows (no store of its own)."""
    return layer.startswith(ALPHA_LAYER_PREFIX)


def alpha_column(layer: str, metric: str) -> str:
    """The column of ``alpha_diversity.parquet`` holding one layer's metric."""
    return f"{layer}:{metric}"
