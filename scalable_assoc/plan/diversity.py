"""The ``diversity`` block: community-level analyses (alpha diversity rows, PERMANOVA) in the plan.

```yaml
diversity:
  layers: [species]             # default: every layer (each must hold abundances)
  alpha: [shannon, simpson, richness]
  beta:
    distances: [aitchison, bray_curtis]
    permutations: 999
    seed: 1
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scalable_assoc.errors import PlanError
from scalable_assoc.plan.values import checked_mapping, location, name_list

#: Alpha metrics (the same names as ``stats.diversity.ALPHA_METRICS``; plan/ does not import stats/).
ALPHA_METRICS = ("shannon", "simpson", "richness")
#: Distances of PERMANOVA: Aitchison (Euclidean on CLR values, never an n x n matrix) and Bray-Curtis (n x n, blockwise).
DISTANCES = ("aitchison", "bray_curtis")


@dataclass(frozen=True)
class BetaSpec:
    """PERMANOVA settings: the distances, permutations per analysis and the seed that fixes them."""

    distances: tuple[str, ...] = ("aitchison",)
    permutations: int = 999
    seed: int = 1


@dataclass(frozen=True)
class DiversitySpec:
    """What the ``diversity`` block asks for.

    ``layers`` None means every layer of the plan. ``alpha`` may be empty (PERMANOVA only);
    ``beta`` None means no PERMANOVA.
    """

    layers: tuple[str, ...] | None = None
    alpha: tuple[str, ...] = ALPHA_METRICS
    beta: BetaSpec | None = None

    def layers_of(self, plan_layers: tuple[str, ...]) -> tuple[str, ...]:
        """The plan layers the block covers, in plan order."""
        return plan_layers if self.layers is None else tuple(name for name in plan_layers if name in self.layers)


def _choices(source: Path, key: str, raw: Any, allowed: tuple[str, ...]) -> tuple[str, ...]:
    names = name_list(source, key, raw) if raw != [] else ()
    for name in names:
        if name not in allowed:
            raise PlanError(f"{location(source, key)}: '{name}' is not one of {', '.join(allowed)}")
    if len(set(names)) < len(names):
        raise PlanError(f"{location(source, key)}: a name is repeated in {list(names)}")
    return names


def _whole_number(source: Path, key: str, raw: Any, minimum: int) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < minimum:
        raise PlanError(f"{location(source, key)}: expected a whole number of at least {minimum}, got {raw!r}")
    return raw


def parse_diversity(source: Path, raw: Any, plan_layers: tuple[str, ...]) -> DiversitySpec | None:
    """``diversity``: validated, each wrong key named; None when the plan has no such block."""
    if raw is None:
        return None
    raw = checked_mapping(source, "diversity", raw, ("layers", "alpha", "beta"))
    layers = None
    if "layers" in raw:
        layers = _choices(source, "diversity.layers", raw["layers"], plan_layers)
        if not layers:
            raise PlanError(f"{location(source, 'diversity.layers')}: name at least one layer of data.layers ({', '.join(plan_layers)})")
    alpha = _choices(source, "diversity.alpha", raw["alpha"], ALPHA_METRICS) if "alpha" in raw else ALPHA_METRICS
    beta = None
    if raw.get("beta") is not None:
        block = checked_mapping(source, "diversity.beta", raw["beta"], ("distances", "permutations", "seed"))
        distances = _choices(source, "diversity.beta.distances", block.get("distances", list(BetaSpec.distances)), DISTANCES)
        if not distances:
            raise PlanError(f"{location(source, 'diversity.beta.distances')}: name at least one of {', '.join(DISTANCES)}")
        permutations = _whole_number(source, "diversity.beta.permutations", block.get("permutations", BetaSpec.permutations), 1)
        seed = _whole_number(source, "diversity.beta.seed", block.get("seed", BetaSpec.seed), 0)
        beta = BetaSpec(distances, permutations, seed)
    if not alpha and beta is None:
        raise PlanError(f"{location(source, 'diversity')}: asks for nothing (no alpha metric, no beta block); remove it or name one")
    return DiversitySpec(layers, alpha, beta)
