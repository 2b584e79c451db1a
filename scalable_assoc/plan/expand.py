"""Expansion of a plan into analyses (layer x exposure x adjustment) with stable ids.

Standard library only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from scalable_assoc.plan.schema import Plan


@dataclass(frozen=True)
class AnalysisKey:
    """One (layer, exposure, adjustment, model) analysis; ``analysis_id`` is a content hash."""

    layer: str
    exposure: str
    adjustment: str
    model: str = "lm"

    @property
    def analysis_id(self) -> str:
        """A short stable id, the same for the same names in any run (lm ids predate the model field)."""
        text = f"{self.layer}\x1f{self.exposure}\x1f{self.adjustment}"
        if self.model != "lm":
            text += f"\x1f{self.model}"
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def expand_analyses(plan: Plan) -> list[AnalysisKey]:
    """Every analysis the plan asks for, in plan order (layers, exposures, adjustments, models), without repeats."""
    seen: dict[AnalysisKey, None] = {}
    for layer in plan.layers:
        for selection in plan.analyses:
            if layer.name not in selection.layers:
                continue
            for exposure in plan.exposures:
                if exposure.name not in selection.exposures:
                    continue
                for adjustment in plan.adjustments:
                    if adjustment in selection.adjustments:
                        for model in layer.models:
                            seen.setdefault(AnalysisKey(layer.name, exposure.name, adjustment, model), None)
    return list(seen)
