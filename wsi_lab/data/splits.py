"""Patient-level (or centre-level) train/val/test splits, stratified by label, and a leakage check.

Every tile of a patient lands in the same split (slides of one patient are correlated; splitting by
tile or slide leaks). Stratification uses each patient's majority label (ties: the smallest class).
:func:`split_by_group` applies the same rule to any grouping column, e.g. ``centre`` (CAMELYON17's
five hospitals: no centre in two splits), with the same allocation code.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from wsi_lab.data.table import default_patient_id
from wsi_lab.data.tile_reader import require_columns
from wsi_lab.errors import DataError, InvalidParameterError, LeakageError

log = logging.getLogger(__name__)

__all__ = ["SPLIT_NAMES", "parse_fractions", "split_by_patient", "split_by_group", "check_no_leakage", "split_summary"]

SPLIT_NAMES = ("train", "val", "test")


def parse_fractions(fractions: Sequence[float] | str) -> tuple[float, float, float]:
    """Validate (train, val, test) fractions: three numbers ≥ 0 summing to 1 (``"0.7,0.15,0.15"`` accepted)."""
    if isinstance(fractions, str):
        try:
            fractions = [float(v) for v in fractions.split(",")]
        except ValueError as exc:
            raise InvalidParameterError(f"fractions {fractions!r}: expected three numbers like 0.7,0.15,0.15") from exc
    vals = [float(v) for v in fractions]
    if len(vals) != 3:
        raise InvalidParameterError(f"fractions {tuple(vals)}: give three values (train, val, test), e.g. 0.7,0.15,0.15")
    if any(not math.isfinite(v) or v < 0 for v in vals):
        raise InvalidParameterError(f"fractions {tuple(vals)}: each must be a number ≥ 0")
    if abs(sum(vals) - 1.0) > 1e-6:
        raise InvalidParameterError(f"fractions {tuple(vals)} sum to {sum(vals):.6g}, not 1")
    return vals[0], vals[1], vals[2]


def _largest_remainder(total: int, weights: Sequence[float]) -> np.ndarray:
    w = np.asarray(weights, float)
    ideal = total * w / w.sum() if w.sum() > 0 else np.zeros_like(w)
    counts = np.floor(ideal).astype(int)
    for i in np.argsort(-(ideal - counts), kind="stable")[: total - counts.sum()]:
        counts[i] += 1
    return counts


def _global_targets(n: int, fractions: Sequence[float], unit: str = "patient") -> np.ndarray:
    """Patients (groups) per split: proportional, and at least one in every split with a fraction > 0."""
    wanted = [i for i, f in enumerate(fractions) if f > 0]
    if n < len(wanted):
        names = [SPLIT_NAMES[i] for i in wanted]
        raise DataError(f"{n} {unit}(s) cannot fill the {len(wanted)} non-empty splits {names} asked for by "
                        f"fractions {tuple(fractions)}; add {unit}s or set a fraction to 0")
    counts = _largest_remainder(n, fractions)
    for i in wanted:
        while counts[i] == 0:  # take one from the split that has the most
            donor = int(np.argmax(counts))
            counts[donor] -= 1
            counts[i] += 1
    return counts


def _allocate(strata_sizes: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Integer matrix (strata × splits) with row sums = stratum sizes and column sums = targets, each
    cell close to its proportional share (controlled rounding, greedy on the largest remainders)."""
    n = strata_sizes.sum()
    ideal = np.outer(strata_sizes, targets / n) if n else np.zeros((len(strata_sizes), len(targets)))
    alloc = np.floor(ideal).astype(int)
    row_left = strata_sizes - alloc.sum(1)
    col_left = targets - alloc.sum(0)
    order = np.dstack(np.unravel_index(np.argsort(-(ideal - alloc), axis=None, kind="stable"), ideal.shape))[0]
    for _ in range(2):  # first pass: one extra per cell by remainder; second: anything still feasible
        for r, c in order:
            k = min(row_left[r], col_left[c], 1 if _ == 0 else row_left[r])
            if k > 0:
                alloc[r, c] += k
                row_left[r] -= k
                col_left[c] -= k
    assert not row_left.any() and not col_left.any(), "allocation must be exact"
    return alloc


def _patient_labels(table: pd.DataFrame, stratify: str, group: str = "patient_id") -> pd.Series:
    """Majority label of each patient (or ``group``; ties broken by the smallest label)."""
    counts = table.groupby([group, stratify], observed=True).size().rename("n").reset_index()
    counts["key"] = counts[stratify].astype(str)
    counts = counts.sort_values([group, "n", "key"], ascending=[True, False, True], kind="stable")
    return counts.drop_duplicates(group).set_index(group)["key"]


def split_by_patient(table: pd.DataFrame, fractions: Sequence[float] | str = (0.7, 0.15, 0.15),
                     stratify: str | None = "label", seed: int = 0) -> pd.DataFrame:
    """A copy of ``table`` with a ``split`` column (``train``/``val``/``test``) assigned per patient.

    No patient is in two splits; patient counts follow ``fractions`` (train, val, test) within each
    stratum of the patients' majority ``stratify`` label (``None``: no stratification). The same
    ``seed`` and table give the same split. A split whose fraction is > 0 always gets a patient; too
    few patients for that raises :class:`DataError`. Parameters are recorded in ``attrs``."""
    require_columns(table, ("slide_id",), "split_by_patient")
    work = table.copy()
    work.attrs = copy.deepcopy(table.attrs)
    if "patient_id" not in work.columns:
        work["patient_id"] = work["slide_id"].astype(str).map(default_patient_id)
    return _split(work, "patient_id", fractions, stratify, seed, "split_by_patient")


def split_by_group(table: pd.DataFrame, group: str = "centre", fractions: Sequence[float] | str = (0.7, 0.15, 0.15),
                   stratify: str | None = None, seed: int = 0) -> pd.DataFrame:
    """A copy of ``table`` with a ``split`` column assigned per value of the ``group`` column (e.g.
    ``centre``: the hospital a slide comes from), so no group is in two splits; group counts follow
    ``fractions`` (within strata of each group's majority ``stratify`` label when given), exactly as
    :func:`split_by_patient` does for patients. Rows without a group value raise :class:`DataError`."""
    require_columns(table, ("slide_id", group), f"split_by_group({group!r})")
    work = table.copy()
    work.attrs = copy.deepcopy(table.attrs)
    return _split(work, group, fractions, stratify, seed, f"split_by_group({group!r})")


def _split(work: pd.DataFrame, group: str, fractions: Sequence[float] | str, stratify: str | None, seed: int,
           what: str) -> pd.DataFrame:
    """Assign ``work["split"]`` per value of ``group`` (in place on the copy ``work``; returned)."""
    fr = parse_fractions(fractions)
    unit = "patient" if group == "patient_id" else group
    if work.empty:
        raise DataError(f"{what}: the table has no rows")
    if work[group].isna().any():
        bad = sorted(work.loc[work[group].isna(), "slide_id"].astype(str).unique())
        raise DataError(f"{what}: slide(s) {bad[:10]} have no {group}; fill it in first")
    if stratify is not None:
        if stratify not in work.columns:
            raise DataError(f"{what}: stratify={stratify!r} but the table has no such column; "
                            "attach labels first (attach_labels) or pass stratify=None")
        if work[stratify].isna().any():
            bad = sorted(work.loc[work[stratify].isna(), "slide_id"].astype(str).unique())
            raise DataError(f"{what}: slide(s) {bad[:10]} have no {stratify!r}; label them or drop them")
        strata = _patient_labels(work.assign(**{group: work[group].astype(str)}), stratify, group)
    else:
        strata = pd.Series("all", index=pd.Index(sorted(pd.unique(work[group].astype(str))), name=group))
    strata.index = strata.index.astype(str)
    strata = strata.sort_index()
    names = sorted(pd.unique(strata))
    groups = [strata.index[strata == s].tolist() for s in names]
    targets = _global_targets(len(strata), fr, unit)
    alloc = _allocate(np.array([len(g) for g in groups]), targets)
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for members, row in zip(groups, alloc):
        order = rng.permutation(len(members))
        start = 0
        for split, k in zip(SPLIT_NAMES, row):
            for j in order[start:start + k]:
                assignment[members[j]] = split
            start += k
    work["split"] = work[group].astype(str).map(assignment).to_numpy()
    meta = dict(work.attrs.get("wsi_lab") or {})
    meta["split"] = {"fractions": list(fr), "stratify": stratify, "seed": int(seed),
                     ("patients" if group == "patient_id" else "groups"): {s: int(c) for s, c in zip(SPLIT_NAMES, targets)}}
    if group != "patient_id":
        meta["split"]["group"] = group
    work.attrs["wsi_lab"] = meta
    log.info("split %d %ss into %s", len(strata), unit, dict(zip(SPLIT_NAMES, targets.tolist())))
    check_no_leakage(work, group)
    return work


def check_no_leakage(table: pd.DataFrame, group: str = "patient_id") -> None:
    """Raise :class:`LeakageError` when a patient (or another ``group``, e.g. ``centre``) has tiles in
    more than one split, naming each such patient and its splits. Rows without a split are ignored."""
    require_columns(table, (group, "split"), "check_no_leakage")
    t = table.dropna(subset=["split"])
    per = t.groupby(t[group].astype(str))["split"].agg(lambda s: sorted(set(map(str, s))))
    leaked = per[per.map(len) > 1]
    if len(leaked):
        unit = "patient" if group == "patient_id" else group
        detail = "; ".join(f"{p} in {', '.join(s)}" for p, s in leaked.items())
        fix = "split_by_patient" if group == "patient_id" else f"split_by_group(table, {group!r})"
        raise LeakageError(f"{unit} leakage: {len(leaked)} {unit}(s) appear in more than one split: {detail}. "
                           f"Re-split with {fix} so every {unit} is in exactly one split")


def split_summary(table: pd.DataFrame, label_column: str = "label") -> pd.DataFrame:
    """Counts of patients, slides and tiles per split (and per label when labelled)."""
    require_columns(table, ("split", "patient_id", "slide_id"), "split_summary")
    keys = ["split"] + ([label_column] if label_column in table.columns else [])
    return table.groupby(keys, observed=True).agg(
        patients=("patient_id", "nunique"), slides=("slide_id", "nunique"), tiles=("slide_id", "size")
    ).reset_index()
