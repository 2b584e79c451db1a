"""Matching features across cohorts whose profilers spell them differently.

MetaPhlAn versions write a species as a full lineage
(``k__Bacteria|...|g__Phocaeicola|s__Phocaeicola_vulgatus``) or as the clade
name alone (``s__Phocaeicola_vulgatus``), and rename genera between database
releases (``s__Bacteroides_vulgatus``). By default a feature is matched on its
last rank-prefixed lineage part (the species name); a user mapping file
(``from``/``to`` columns, tab-separated) renames spellings first. Names that
are not lineages (pathways, modules) are matched as they are.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from scalable_assoc.errors import DataError

_RANK_PART = re.compile(r"^[kpcofgst]__\S")


def canonical_name(name: str) -> str:
    """The species (or lowest-rank) part of a MetaPhlAn lineage; other names unchanged."""
    parts = name.split("|")
    if len(parts) > 1 and all(_RANK_PART.match(p) for p in parts):
        return parts[-1]
    return name


def feature_set_digest(names: Iterable[str]) -> str:
    """SHA-256 (hex) of a feature set: the names reduced by :func:`canonical_name`, unique, sorted, one per line.

    Two cohorts whose transform ran over the same features get the same digest,
    whichever MetaPhlAn spelling (lineage or clade name) their tables use.
    """
    normalised = sorted({canonical_name(str(name).strip()) for name in names})
    return hashlib.sha256("\n".join(normalised).encode()).hexdigest()


def read_mapping(path: Path) -> dict[str, str]:
    """A two-column mapping file (``from``, ``to``; tab-separated, header required).

    Parameters
    ----------
    path
        The mapping file: one row per feature spelling, ``from`` (as a cohort spells
        it) and ``to`` (the name shared by every cohort).

    Returns
    -------
    dict of str to str
        ``from`` -> ``to``.

    Raises
    ------
    DataError
        The file is missing, lacks the columns or maps one spelling to two names.

    Examples
    --------
    >>> from scalable_assoc import read_mapping
    >>> mapping = read_mapping(biobanks.mapping_path)  # each cohort's feature spellings -> one name
    >>> mapping["s__Bacteroides_vulgatus"]  # a renamed genus: one name for all cohorts
    's__Phocaeicola_vulgatus'

    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"feature mapping {path}: no such file")
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, comment="#")
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataError(f"feature mapping {path}: not a tab-separated table ({' '.join(str(error).split())})") from None
    missing = [c for c in ("from", "to") if c not in table.columns]
    if missing:
        raise DataError(
            f"feature mapping {path}: needs columns 'from' and 'to' (missing {', '.join(missing)}; found "
            f"{', '.join(map(str, table.columns))})"
        )
    if table[["from", "to"]].isna().any().any():
        row = int(table[["from", "to"]].isna().any(axis=1).to_numpy().argmax()) + 2
        raise DataError(f"feature mapping {path}, line {row}: empty 'from' or 'to'")
    duplicated = table["from"][table["from"].duplicated()].unique().tolist()
    if duplicated:
        raise DataError(f"feature mapping {path}: 'from' name(s) listed twice: {', '.join(duplicated[:5])}")
    return dict(zip(table["from"], table["to"], strict=True))


def harmonised_names(names: pd.Series, mapping: dict[str, str] | None = None) -> pd.Series:
    """The matching key of each feature name: mapped (whole name, then species part), then reduced to the species part."""
    mapping = mapping or {}

    def key(name: str) -> str:
        if name in mapping:
            return canonical_name(mapping[name])
        short = canonical_name(name)
        return canonical_name(mapping.get(short, short))

    unique = pd.unique(names)
    lookup = {n: key(n) for n in unique}
    return names.map(lookup)


def coverage_table(present: pd.DataFrame, cohorts: list[str]) -> pd.DataFrame:
    """Per layer and harmonised feature: in how many and which cohorts it has rows.

    ``present`` holds columns ``layer, feature, cohort`` (one row per pair present).
    """
    pairs = present.drop_duplicates(["layer", "feature", "cohort"])
    order = {c: i for i, c in enumerate(cohorts)}
    pairs = pairs.assign(_order=pairs["cohort"].map(order)).sort_values(["layer", "feature", "_order"], kind="stable")
    grouped = pairs.groupby(["layer", "feature"], sort=False)["cohort"]
    table = grouped.agg(cohorts="count", present_in=lambda s: ",".join(s)).reset_index()
    table["missing_from"] = table["present_in"].map(lambda text: ",".join(c for c in cohorts if c not in text.split(",")))
    return table


def feature_coverage(layers: np.ndarray, features: np.ndarray, presence: np.ndarray, cohorts: list[str]) -> pd.DataFrame:
    """:func:`coverage_table` from a presence matrix: one row per distinct (layer, feature), sorted by them.

    Parameters
    ----------
    layers, features
        ``(f,)`` text of each distinct (layer, harmonised feature).
    presence
        ``(f, k)`` bool: whether cohort ``j`` has rows for it.
    cohorts
        The ``k`` cohort names, in file order.

    Returns
    -------
    pd.DataFrame
        ``layer, feature, cohorts, present_in, missing_from`` as :func:`coverage_table` gives them.
    """
    names = np.array(cohorts, dtype=object)
    order = pd.DataFrame({"layer": layers, "feature": features}).sort_values(["layer", "feature"], kind="stable").index.to_numpy()
    presence = presence[order]
    # one text per distinct pattern of cohorts (at most 2^k, few in practice)
    patterns, inverse = (
        np.unique(presence, axis=0, return_inverse=True) if len(presence) else (np.zeros((0, len(cohorts)), bool), np.zeros(0, np.int64))
    )
    inverse = np.asarray(inverse).reshape(-1)
    present_in = np.array([",".join(names[row]) for row in patterns], dtype=object)
    missing_from = np.array([",".join(names[~row]) for row in patterns], dtype=object)
    return pd.DataFrame(
        {
            "layer": np.asarray(layers, dtype=object)[order],
            "feature": np.asarray(features, dtype=object)[order],
            "cohorts": presence.sum(axis=1).astype(np.int64),
            "present_in": present_in[inverse],
            "missing_from": missing_from[inverse],
        }
    )
