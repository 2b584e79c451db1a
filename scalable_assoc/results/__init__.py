"""Results: the output column registry, gathering chunk files, FDR, adjustment summaries."""
