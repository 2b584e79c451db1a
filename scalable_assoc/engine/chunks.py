"""Chunks: the unit of work and of resuming, a block of a layer's features x a batch of analyses.

A chunk's id is a hash of what can change its rows (the plan's rows hash, the
inputs' checksums, the feature list, the block and the analyses), so a resumed
run recognises the chunk files it can reuse and never reuses a stale one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from scalable_assoc.engine.graph import layer_token
from scalable_assoc.engine.prepare import PreparedAnalysis, PreparedStudy
from scalable_assoc.plan.schema import MODELS
from scalable_assoc.results.columns import COVARIATE_SCHEMA, PARTIAL_SCHEMA


@dataclass(frozen=True)
class ChunkTask:
    """One task: a block of a layer's features x a batch of analyses (whole design groups)."""

    chunk_id: str
    layer: str
    block_index: int
    start: int
    stop: int
    analyses: tuple[PreparedAnalysis, ...]
    #: the task also writes every covariate's coefficient rows (``<chunk id>.covariates.parquet``)
    covariate_rows: bool = False

    def rows_file(self, chunks_dir: Path) -> Path:
        """The chunk's results rows: ``<chunk id>.parquet``."""
        return chunks_dir / f"{self.chunk_id}.parquet"

    def covariates_file(self, chunks_dir: Path) -> Path | None:
        """The chunk's covariate coefficient rows, ``<chunk id>.covariates.parquet``; None when the run asked for none."""
        return chunks_dir / f"{self.chunk_id}.covariates.parquet" if self.covariate_rows else None

    def files(self, chunks_dir: Path) -> list[Path]:
        """Every file the task writes: all must be present and sealed for the chunk to count as done."""
        covariates = self.covariates_file(chunks_dir)
        return [self.rows_file(chunks_dir)] + ([covariates] if covariates is not None else [])


#: Models whose chunks carry covariate coefficient rows when a run asks for them.
COVARIATE_ROW_MODELS = ("lm",)


def batch_analyses(
    analyses: list[PreparedAnalysis], analyses_per_task: int, subsets: dict[str, str] | None = None
) -> list[tuple[PreparedAnalysis, ...]]:
    """Group analyses by model and design, then pack whole groups of one model into batches of about ``analyses_per_task``.

    A batch holds one model only: each model reads its own view of the block
    (transformed, non-zero values, presence). Within a model, the analyses that
    share work inside a task are packed together: for the linear models,
    designs with the same covariates (one product over the block; row atoms for
    lm_nonzero's Gram matrices); for ``prevalence``, the designs on one
    participant subset (``subsets`` maps a design key to its subset's digest),
    that is the adjustment sets of an exposure, which share the block's
    presence view and start each other's Firth fits.
    """

    def shared_subset(analysis: PreparedAnalysis) -> str:
        """The subset digest a prevalence analysis shares work by; '' for the other models."""
        return subsets[analysis.design_key] if analysis.key.model == "prevalence" and subsets is not None else ""

    groups: dict[tuple[str, str, bool], list[PreparedAnalysis]] = {}
    # Categorical exposures (fitted jointly over their levels, by their own kernel) keep batches of their own.
    for analysis in sorted(analyses, key=lambda a: (MODELS.index(a.key.model), bool(a.levels), shared_subset(a), a.covariates)):
        groups.setdefault((analysis.key.model, shared_subset(analysis) or analysis.design_key, bool(analysis.levels)), []).append(analysis)
    batches: list[tuple[PreparedAnalysis, ...]] = []
    current: list[PreparedAnalysis] = []
    for group in groups.values():
        if current and (
            len(current) + len(group) > analyses_per_task
            or current[0].key.model != group[0].key.model
            or bool(current[0].levels) != bool(group[0].levels)
        ):
            batches.append(tuple(current))
            current = []
        current.extend(group)
    if current:
        batches.append(tuple(current))
    return batches


def chunk_tasks(study: PreparedStudy, analyses_per_task: int, covariate_rows: bool = False) -> list[ChunkTask]:
    """Every (feature block x analysis batch) task of the study, with ids stable across runs.

    The ids cover the chunk files' columns: files written with other columns (an
    older version) are never reused by a resumed run. With ``covariate_rows`` the
    ids of lm chunks say so too, so a resumed run never reuses chunks without them.
    """
    columns = PARTIAL_SCHEMA.to_string(show_schema_metadata=False)
    tasks = []
    for layer in study.layers:
        subsets = {key: hashlib.sha256(design.rows.tobytes()).hexdigest() for key, design in layer.designs.items()}
        batches = batch_analyses(layer.analyses, analyses_per_task, subsets)
        samples = layer.samples_digest()
        # A CLR reference's table (and its samples) change this layer's rows: its token is in the id.
        name = layer.spec.preprocess.clr_reference
        reference = [f"clr_reference={layer_token(study, study.layer_work(name))}"] if name is not None else []
        for block_index, (start, stop) in enumerate(layer.store.block_bounds()):
            for batch in batches:
                text = "\x1f".join(
                    [
                        study.plan.rows_hash(),
                        study.metadata_sha256,
                        layer.input_sha256,
                        layer.spec.name,
                        samples,
                        str(start),
                        str(stop),
                        columns,
                    ]
                    + [a.key.analysis_id for a in batch]
                    + ([f"features={layer.list_token()}"] if layer.listed is not None else [])
                    + reference
                )
                with_covariates = covariate_rows and batch[0].key.model in COVARIATE_ROW_MODELS
                if with_covariates:
                    text += "\x1fcovariate rows\x1f" + COVARIATE_SCHEMA.to_string(show_schema_metadata=False)
                chunk_id = hashlib.sha256(text.encode()).hexdigest()[:24]
                tasks.append(ChunkTask(chunk_id, layer.spec.name, block_index, start, stop, batch, with_covariates))
    return tasks
