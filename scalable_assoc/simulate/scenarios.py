"""Scenarios of the methods benchmark (``scalable-assoc benchmark-methods``) and their simulated data sets.

A scenario file (YAML, data only) has a ``defaults:`` block holding every
parameter and ``scenarios:`` (name -> the parameters it changes); the shipped
file ``methods_scenarios.yaml`` beside this module documents each parameter with
its unit. :func:`load_scenarios` reads and checks one (errors name the file and
the key path), :func:`simulate_scenario` draws replicate ``r`` of a scenario:
a two-group (disorder 0/1) study of ``participants`` x ``features`` with known
truth, from the zero-inflated log-normal model of the study simulator
(:func:`~scalable_assoc.simulate.abundance.zero_inflated_abundance`).

Per replicate the simulator draws (all from ``SeedSequence([seed, crc32(name), r])``):

* participants: families of ``families.size`` (``family_id``; none at size 1) with
  a family liability of the disorder (logistic-scale ICC ``families.disorder_icc``),
  ``disorder ~ Bernoulli``, the drug with odds ``drug.rate / (1 - drug.rate)`` times
  ``drug.odds_ratio`` for cases, age (years), sex (0/1) and the natural-log read
  depth ``log_depth ~ N(0, depth_sd^2)``;
* features: prevalence ``U(prevalence)``, ``mu ~ N(0, 1)``, ``sigma ~ U(0.8, 1.2)``,
  two latent community axes, small age and sex effects, family ICC
  ``families.icc`` (capped so the within-family noise keeps a positive variance);
  ``compositional.features`` dominant features (prevalence 0.98, together
  ``compositional.share`` of a control sample's total) get a disorder log fold
  change of ``+compositional.shift``; of the other features ``effects.count`` get a
  disorder effect (``+-effects.size``; a share ``effects.presence_only_share`` of
  them a presence-only one of ``+-effects.presence_log_odds``) and another
  ``drug.features`` a drug effect ``+-drug.effect``;
* values: presence and log abundance as in the study simulator, then technical zeros
  (``zero_inflation``), closure to percent, and read counts
  ``round(percent / 100 * reads * exp(log_depth))``.

Only numpy, pandas, pyyaml and the standard library are used.
"""

from __future__ import annotations

import copy
import math
import re
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from scalable_assoc.errors import UserInputError
from scalable_assoc.simulate.abundance import PRESENCE_COUPLING, closure, zero_inflated_abundance

DEFAULT_SCENARIOS_FILE = "methods_scenarios.yaml"
"""The shipped scenario file, package data of :mod:`scalable_assoc.simulate`."""

#: Terms (columns of the term matrix, rows of the effect matrices) of a scenario's generative model.
TERMS = ("disorder", "drug", "age", "sex")
_N_FACTORS = 2
_COVARIATE_EFFECT_SD = 0.1  # log fold change per SD of age / per sex, every feature (adjusted for by every method)
_DOMINANT_PREVALENCE = 0.98
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _number(
    low: float | None = None, high: float | None = None, *, above: bool = False, below: bool = False
) -> Callable[[Any], str | None]:
    """A check of a number in [low, high] (``above``/``below``: the bound itself excluded); returns what was expected, or None."""

    def check(value: Any) -> str | None:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        ok = (
            ok
            and (low is None or (value > low if above else value >= low))
            and (high is None or (value < high if below else value <= high))
        )
        if ok:
            return None
        bounds = []
        if low is not None:
            bounds.append(f"{'>' if above else '>='} {low:g}")
        if high is not None:
            bounds.append(f"{'<' if below else '<='} {high:g}")
        return "a number" + (" " + " and ".join(bounds) if bounds else "")

    return check


def _whole(low: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if isinstance(value, int) and not isinstance(value, bool) and value >= low else f"a whole number >= {low}"

    return check


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "true or false"


def _unit_range(value: Any) -> str | None:
    expected = "a list [lo, hi] of two numbers with 0 < lo <= hi < 1"
    if not isinstance(value, list) or len(value) != 2:
        return expected
    if any(_number(0.0, 1.0, above=True, below=True)(v) for v in value) or value[0] > value[1]:
        return expected
    return None


#: key path -> (Scenario field, check). Nested YAML blocks are the dotted prefixes.
_SCHEMA: dict[str, tuple[str, Callable[[Any], str | None]]] = {
    "participants": ("participants", _whole(20)),
    "features": ("features", _whole(5)),
    "replicates": ("replicates", _whole(1)),
    "alpha": ("alpha", _number(0.0, 1.0, above=True, below=True)),
    "seed": ("seed", _whole(0)),
    "disorder_prevalence": ("disorder_prevalence", _number(0.0, 1.0, above=True, below=True)),
    "effects.count": ("n_effects", _whole(0)),
    "effects.size": ("effect_size", _number(0.0)),
    "effects.presence_only_share": ("presence_only_share", _number(0.0, 1.0)),
    "effects.presence_log_odds": ("presence_log_odds", _number(0.0)),
    "prevalence": ("prevalence", _unit_range),
    "zero_inflation": ("zero_inflation", _number(0.0, 1.0, below=True)),
    "depth_sd": ("depth_sd", _number(0.0)),
    "reads": ("reads", _whole(1)),
    "compositional.features": ("compositional_features", _whole(0)),
    "compositional.shift": ("compositional_shift", _number(0.0)),
    "compositional.share": ("compositional_share", _number(0.0, 1.0, above=True, below=True)),
    "drug.rate": ("drug_rate", _number(0.0, 1.0, above=True, below=True)),
    "drug.odds_ratio": ("drug_odds_ratio", _number(0.0, above=True)),
    "drug.features": ("drug_features", _whole(0)),
    "drug.effect": ("drug_effect", _number(0.0)),
    "families.size": ("family_size", _whole(1)),
    "families.icc": ("family_icc", _number(0.0, 1.0, below=True)),
    "families.disorder_icc": ("disorder_family_icc", _number(0.0, 1.0, below=True)),
    "global_null": ("global_null", _boolean),
}
_BLOCKS = {path.split(".")[0] for path in _SCHEMA if "." in path}


@dataclass(frozen=True)
class Scenario:
    """One scenario: every parameter of the generative model (see the module docstring; units in ``methods_scenarios.yaml``)."""

    name: str
    participants: int
    features: int
    replicates: int
    alpha: float
    seed: int
    disorder_prevalence: float
    n_effects: int
    effect_size: float
    presence_only_share: float
    presence_log_odds: float
    prevalence: tuple[float, float]
    zero_inflation: float
    depth_sd: float
    reads: int
    compositional_features: int
    compositional_shift: float
    compositional_share: float
    drug_rate: float
    drug_odds_ratio: float
    drug_features: int
    drug_effect: float
    family_size: int
    family_icc: float
    disorder_family_icc: float
    global_null: bool

    @property
    def has_families(self) -> bool:
        """Participants come in families (a ``family_id`` column; the benchmark adds an lmm)."""
        return self.family_size > 1

    @property
    def disorder_effects(self) -> int:
        """Features planted with an ordinary or presence-only disorder effect (0 under the global null)."""
        return 0 if self.global_null else self.n_effects

    @property
    def dominant_features(self) -> int:
        """Dominant features with a large disorder shift (0 under the global null)."""
        return 0 if self.global_null else self.compositional_features

    def as_dict(self) -> dict[str, Any]:
        """The parameters as a flat dict (for manifests)."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}


@dataclass(frozen=True)
class ScenarioGrid:
    """The scenarios of a file, in file order, with where they came from."""

    scenarios: tuple[Scenario, ...]
    source: str
    text: str

    def names(self) -> list[str]:
        """Scenario names, in file order."""
        return [s.name for s in self.scenarios]

    def with_replicates(self, replicates: int) -> ScenarioGrid:
        """Every scenario with ``replicates`` data sets (``--replicates``)."""
        from dataclasses import replace

        return ScenarioGrid(tuple(replace(s, replicates=replicates) for s in self.scenarios), self.source, self.text)


@dataclass(frozen=True)
class ScenarioData:
    """One simulated data set of a scenario (the benchmark's shared interface).

    ``abundance`` (n, F) percent (rows sum to 100; 0 = absent), ``counts`` (n, F) int64
    reads behind it, ``feature_names`` F names, ``metadata`` one row per participant
    (``sample_id, disorder, drug, age, sex, log_depth`` and ``family_id`` with families),
    ``truth`` one row per feature in order: ``feature, abundance_effect`` (log fold change
    of the absolute abundance where present, per disorder), ``presence_effect`` (log odds
    of presence per disorder, total), ``drug_effect`` (log fold change by the drug),
    ``compositional`` (one of the dominant large-shift features).
    """

    abundance: np.ndarray
    counts: np.ndarray
    feature_names: list[str]
    metadata: pd.DataFrame
    truth: pd.DataFrame


def default_scenarios_text() -> str:
    """The text of the shipped scenario file."""
    return resources.files("scalable_assoc.simulate").joinpath(DEFAULT_SCENARIOS_FILE).read_text(encoding="utf-8")


def load_scenarios(path: str | Path | None = None) -> ScenarioGrid:
    """Read and check a scenario file (None: the shipped ``methods_scenarios.yaml``).

    Parameters
    ----------
    path
        A YAML file with ``defaults:`` (changes of the shipped defaults) and
        ``scenarios:`` (name -> parameters it changes), or None.

    Returns
    -------
    ScenarioGrid
        Its scenarios in file order, the file's name and text.

    Raises
    ------
    UserInputError
        The file is missing or not YAML, or names an unknown key, a value of the wrong type
        or out of range, or no scenario; the message names the file and the key path, e.g.
        ``s.yaml: scenarios.compositional.compositional.shift: expected a number >= 0, got 'big'``.

    Examples
    --------
    >>> grid = load_scenarios(None)
    >>> grid.names()[:2]
    ['baseline', 'global_null']
    """
    shipped_text = default_scenarios_text()
    shipped = _parse(shipped_text, DEFAULT_SCENARIOS_FILE)
    base = _check_block(shipped.get("defaults"), DEFAULT_SCENARIOS_FILE, "defaults", complete=True)
    if path is None:
        return _grid(base, shipped, DEFAULT_SCENARIOS_FILE, shipped_text)
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UserInputError(f"scenario file {file}: cannot be read ({error})") from None
    document = _parse(text, str(file))
    defaults = _merge(base, _check_block(document.get("defaults", {}), str(file), "defaults"))
    return _grid(defaults, document, str(file), text)


def _parse(text: str, source: str) -> dict[str, Any]:
    """The YAML mapping of a scenario file; only the keys ``defaults`` and ``scenarios``."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise UserInputError(f"{source}: not a YAML file of scenarios ({' '.join(str(error).split())})") from None
    if not isinstance(document, dict):
        raise UserInputError(f"{source}: expected a mapping with 'defaults' and 'scenarios', got {type(document).__name__}")
    for key in document:
        if key not in ("defaults", "scenarios"):
            raise UserInputError(f"{source}: {key}: unknown key (expected 'defaults' or 'scenarios')")
    return document


def _check_block(block: Any, source: str, where: str, complete: bool = False) -> dict[str, Any]:
    """``block`` flattened to dotted key paths, every key known and every value checked (``complete``: all keys present)."""
    if block is None:
        block = {}
    if not isinstance(block, dict):
        raise UserInputError(f"{source}: {where}: expected a mapping of parameters, got {block!r}")
    flat: dict[str, Any] = {}
    for key, value in block.items():
        path = str(key)
        if path in _BLOCKS:
            if not isinstance(value, dict):
                raise UserInputError(f"{source}: {where}.{path}: expected a mapping of parameters, got {value!r}")
            for inner, inner_value in value.items():
                flat[f"{path}.{inner}"] = inner_value
        else:
            flat[path] = value
    for path, value in flat.items():
        if path not in _SCHEMA:
            known = sorted(_SCHEMA)
            raise UserInputError(f"{source}: {where}.{path}: unknown key (known: {', '.join(known)})")
        expected = _SCHEMA[path][1](value)
        if expected is not None:
            raise UserInputError(f"{source}: {where}.{path}: expected {expected}, got {value!r}")
    if complete:
        missing = [p for p in _SCHEMA if p not in flat]
        if missing:
            raise UserInputError(f"{source}: {where}: missing {', '.join(missing)}")
    return flat


def _merge(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(dict(base))
    merged.update(copy.deepcopy(dict(changes)))
    return merged


def _grid(defaults: dict[str, Any], document: dict[str, Any], source: str, text: str) -> ScenarioGrid:
    """The scenarios of ``document`` over ``defaults``, each checked as a whole."""
    entries = document.get("scenarios")
    if not isinstance(entries, dict) or not entries:
        raise UserInputError(f"{source}: scenarios: expected a mapping of scenario name -> parameters, with at least one scenario")
    scenarios = []
    for name, overrides in entries.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise UserInputError(f"{source}: scenarios.{name}: a scenario name is letters, digits, '_', '-' or '.' (at most 64)")
        values = _merge(defaults, _check_block(overrides, source, f"scenarios.{name}"))
        kwargs = {_SCHEMA[path][0]: value for path, value in values.items()}
        kwargs["prevalence"] = (float(values["prevalence"][0]), float(values["prevalence"][1]))
        scenario = Scenario(name=name, **kwargs)
        _check_scenario(scenario, source)
        scenarios.append(scenario)
    return ScenarioGrid(tuple(scenarios), source, text)


def _check_scenario(s: Scenario, source: str) -> None:
    """What no single key can say: the planted features fit among the features, groups are large enough."""
    where = f"{source}: scenarios.{s.name}"
    planted = s.disorder_effects + s.dominant_features + s.drug_features
    if planted > s.features:
        raise UserInputError(f"{where}: effects.count + compositional.features + drug.features ({planted}) exceed features ({s.features})")
    expected_cases = s.participants * s.disorder_prevalence
    if min(expected_cases, s.participants - expected_cases) < 10:
        raise UserInputError(f"{where}: disorder_prevalence: fewer than 10 expected cases or controls among {s.participants} participants")
    if s.family_size > s.participants // 2:
        raise UserInputError(f"{where}: families.size: {s.family_size} leaves fewer than two families among {s.participants} participants")


def scenario_seed(scenario: Scenario, replicate: int) -> np.random.SeedSequence:
    """The seed sequence of replicate ``replicate`` of ``scenario``: ``[seed, crc32(name), replicate]``."""
    return np.random.SeedSequence([scenario.seed, zlib.crc32(scenario.name.encode("utf-8")), replicate])


def simulate_scenario(scenario: Scenario, replicate: int) -> ScenarioData:
    """Replicate ``replicate`` of ``scenario`` (deterministic: same scenario and replicate, same data).

    Parameters
    ----------
    scenario
        The scenario (see the module docstring for what each parameter does).
    replicate
        Replicate number (0-based).

    Returns
    -------
    ScenarioData
        ``participants`` x ``features`` percent abundances, read counts, metadata and truth.

    Examples
    --------
    >>> data = simulate_scenario(load_scenarios(None).scenarios[0], 0)
    >>> data.abundance.shape == (len(data.metadata), len(data.feature_names))
    True
    """
    s = scenario
    people_rng, param_rng, value_rng, family_rng = (np.random.default_rng(child) for child in scenario_seed(s, replicate).spawn(4))
    n, n_features = s.participants, s.features
    metadata, terms, family = _participants(s, people_rng, family_rng)
    p = _feature_params(s, param_rng)
    factors = people_rng.standard_normal((n, _N_FACTORS))
    log_depth = metadata["log_depth"].to_numpy()
    values = zero_inflated_abundance(
        value_rng,
        p["mu"],
        p["sigma"],
        p["prev"],
        p["loadings"],
        p["B"],
        terms,
        factors,
        log_depth,
        family=family,
        icc=p["icc"] if family is not None else None,
        family_rng=family_rng,
        presence_icc_share=0.5 if family is not None else 0.0,
        presence_effects=p["P"],
        coupling=p["coupling"],
    )
    if s.zero_inflation > 0:
        lost = value_rng.random(values.shape) < s.zero_inflation
        kept = np.where(lost, 0.0, values)
        # A sample keeps at least its most abundant feature (every sample observes something).
        empty = ~(kept > 0).any(axis=1)
        rows = np.flatnonzero(empty)
        kept[rows, np.argmax(values[rows], axis=1)] = values[rows, np.argmax(values[rows], axis=1)]
        values = kept
    abundance = closure(values, 100.0)
    depth = s.reads * np.exp(log_depth)
    counts = np.rint(abundance / 100.0 * depth[:, None]).astype(np.int64)
    names = [f"feature_{j + 1:04d}" for j in range(n_features)]
    disorder, drug = TERMS.index("disorder"), TERMS.index("drug")
    truth = pd.DataFrame(
        {
            "feature": names,
            "abundance_effect": p["B"][disorder],
            "presence_effect": p["coupling"] * p["B"][disorder] + p["P"][disorder],
            "drug_effect": p["B"][drug],
            "compositional": p["compositional"],
        }
    )
    return ScenarioData(abundance, counts, names, metadata, truth)


def _participants(
    s: Scenario, rng: np.random.Generator, family_rng: np.random.Generator
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray | None]:
    """Metadata frame, term matrix ``(n, len(TERMS))`` and family codes ``(n,)`` (None without families)."""
    n = s.participants
    logit = np.full(n, math.log(s.disorder_prevalence / (1.0 - s.disorder_prevalence)))
    family = None
    if s.has_families:
        family = np.arange(n) // s.family_size
        if s.disorder_family_icc > 0:
            # Latent logistic liability: var(u) / (var(u) + pi^2 / 3) = disorder_icc.
            h = s.disorder_family_icc
            u = family_rng.standard_normal(int(family.max()) + 1) * math.sqrt(h / (1.0 - h) * math.pi**2 / 3.0)
            logit = logit + u[family]
    disorder = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
    drug_logit = math.log(s.drug_rate / (1.0 - s.drug_rate)) + math.log(s.drug_odds_ratio) * disorder
    drug = (rng.random(n) < 1.0 / (1.0 + np.exp(-drug_logit))).astype(np.int64)
    age = np.round(rng.normal(50.0, 12.0, n), 1)
    sex = (rng.random(n) < 0.5).astype(np.int64)
    log_depth = rng.normal(0.0, s.depth_sd, n) if s.depth_sd > 0 else np.zeros(n)
    metadata = pd.DataFrame(
        {
            "sample_id": [f"S{i + 1:06d}" for i in range(n)],
            "disorder": disorder,
            "drug": drug,
            "age": age,
            "sex": sex,
            "log_depth": np.round(log_depth, 6),
        }
    )
    if family is not None:
        metadata["family_id"] = [f"F{f + 1:05d}" for f in family]
    terms = np.column_stack([disorder, drug, (age - 50.0) / 12.0, sex - 0.5]).astype(np.float64)
    return metadata, terms, family


def _feature_params(s: Scenario, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-feature parameters and planted effects: ``mu, sigma, prev, loadings, icc, B, P (terms, F), coupling, compositional``."""
    f = s.features
    prev = rng.uniform(s.prevalence[0], s.prevalence[1], f)
    mu = rng.normal(0.0, 1.0, f)
    sigma = rng.uniform(0.8, 1.2, f)
    loadings = rng.normal(0.0, 0.3, (f, _N_FACTORS))
    B = np.zeros((len(TERMS), f))
    P = np.zeros((len(TERMS), f))
    B[TERMS.index("age")] = rng.normal(0.0, _COVARIATE_EFFECT_SD, f)
    B[TERMS.index("sex")] = rng.normal(0.0, _COVARIATE_EFFECT_SD, f)
    coupling = np.full(f, PRESENCE_COUPLING)
    order = rng.permutation(f)
    k, m, d = s.dominant_features, s.disorder_effects, s.drug_features
    dominant, effects, drugged = order[:k], order[k : k + m], order[k + m : k + m + d]
    compositional = np.zeros(f, dtype=bool)
    disorder, drug = TERMS.index("disorder"), TERMS.index("drug")
    if k:
        compositional[dominant] = True
        prev[dominant] = _DOMINANT_PREVALENCE
        others = np.setdiff1d(np.arange(f), dominant)
        # Mean total of the other features in a control sample; the dominant ones together hold `share` of it.
        spread = sigma**2 + (loadings**2).sum(axis=1)
        rest = float(np.sum(prev[others] * np.exp(mu[others] + spread[others] / 2.0)))
        each = s.compositional_share / (1.0 - s.compositional_share) * rest / (k * _DOMINANT_PREVALENCE)
        mu[dominant] = np.log(each) - spread[dominant] / 2.0
        B[disorder, dominant] = s.compositional_shift
    sign = np.where(rng.random(m) < 0.5, -1.0, 1.0)
    presence_only = np.arange(m) < int(round(s.presence_only_share * m))
    ordinary = effects[~presence_only]
    B[disorder, ordinary] = sign[~presence_only] * s.effect_size
    P[disorder, effects[presence_only]] = sign[presence_only] * s.presence_log_odds
    coupling[effects[presence_only]] = 0.0  # presence-only: the abundance where present does not move
    B[drug, drugged] = np.where(rng.random(d) < 0.5, -1.0, 1.0) * s.drug_effect
    icc = np.zeros(f)
    if s.has_families and s.family_icc > 0:
        s2 = sigma**2
        icc = np.minimum(s.family_icc, 0.8 * s2 / (s2 + (loadings**2).sum(axis=1)))
    return {
        "prev": prev,
        "mu": mu,
        "sigma": sigma,
        "loadings": loadings,
        "B": B,
        "P": P,
        "coupling": coupling,
        "icc": icc,
        "compositional": compositional,
    }
