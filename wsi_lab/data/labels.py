"""Slide labels: read them from a CSV or from folder names, and attach them to a TileTable.

A labels CSV has a header with ``slide_id,label`` and optionally ``patient_id``. Labels may be
strings (``LUAD``) or integers (``0``, ``1``); the class index used by exports and datasets is the
position of the label among the sorted class names, recorded as ``attrs["wsi_lab"]["label_index"]``.
"""

from __future__ import annotations

import copy
import csv
import logging
import os
import warnings
from pathlib import Path

import pandas as pd

from wsi_lab.data.table import default_patient_id
from wsi_lab.data.tile_reader import label_key, require_columns
from wsi_lab.errors import DataError, InvalidParameterError

log = logging.getLogger(__name__)

__all__ = ["read_labels", "labels_from_folders", "attach_labels", "make_label_index", "UnknownSlidesWarning"]

LABEL_COLUMNS = ("slide_id", "label", "patient_id")


class UnknownSlidesWarning(UserWarning):
    """The labels name slides that are not in the TileTable (they are ignored)."""


def _as_int_if_all_int(values: list[str]) -> list:
    try:
        return [int(v) for v in values]
    except ValueError:
        return values


def read_labels(csv_path: str | os.PathLike) -> pd.DataFrame:
    """Read a labels CSV (``slide_id,label[,patient_id]``) into a DataFrame with those columns.

    Labels that all parse as integers become ints, otherwise they stay strings. A repeated slide id
    with the same label is merged; with a different label, an empty slide id or label, or a column
    other than those three, :class:`DataError` names the file and line."""
    p = Path(csv_path)
    if not p.is_file():
        raise DataError(f"{p}: labels file not found")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{p}: not a UTF-8 text file ({exc})") from exc
    rows = list(csv.reader(text.splitlines()))
    if not rows or not any(cell.strip() for cell in rows[0]):
        raise DataError(f"{p}:1: empty labels file; expected a header 'slide_id,label[,patient_id]'")
    header = [c.strip() for c in rows[0]]
    unknown = [c for c in header if c not in LABEL_COLUMNS]
    if unknown:
        raise DataError(f"{p}:1: unknown column(s) {unknown}; a labels CSV has columns slide_id,label[,patient_id]")
    if len(set(header)) != len(header):
        raise DataError(f"{p}:1: repeated column in header {header}")
    for needed in ("slide_id", "label"):
        if needed not in header:
            raise DataError(f"{p}:1: missing column {needed!r}; a labels CSV has columns slide_id,label[,patient_id]")
    col = {name: i for i, name in enumerate(header)}
    seen: dict[str, tuple[str, int]] = {}
    records: list[dict] = []
    for lineno, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue  # blank line
        if len(row) != len(header):
            raise DataError(f"{p}:{lineno}: expected {len(header)} fields ({','.join(header)}), got {len(row)}: {row}")
        rec = {name: row[i].strip() for name, i in col.items()}
        if not rec["slide_id"]:
            raise DataError(f"{p}:{lineno}: empty slide_id")
        if not rec["label"]:
            raise DataError(f"{p}:{lineno}: slide {rec['slide_id']!r} has an empty label; give it one or remove the line")
        sid = rec["slide_id"]
        if sid in seen:
            label0, line0 = seen[sid]
            if label0 != rec["label"]:
                raise DataError(f"{p}:{lineno}: slide {sid!r} has label {rec['label']!r} here but {label0!r} on line "
                                f"{line0}; keep one")
            continue
        seen[sid] = (rec["label"], lineno)
        records.append(rec)
    if not records:
        raise DataError(f"{p}: no labels (only a header)")
    df = pd.DataFrame.from_records(records, columns=[c for c in LABEL_COLUMNS if c in header])
    df["label"] = _as_int_if_all_int(df["label"].tolist())
    if "patient_id" in df.columns:
        df["patient_id"] = df["patient_id"].replace("", None)
    df.attrs["wsi_lab"] = {"labels_source": str(p)}
    return df


def labels_from_folders(root: str | os.PathLike) -> pd.DataFrame:
    """Labels from a folder tree ``root/<label>/<slide file>``: one row per slide found (recursively),
    ``label`` = the name of the folder holding the slide. Also records ``path`` per slide."""
    from wsi_lab.slide import find_slides  # listing only: metadata=False opens no slide

    r = Path(root)
    if not r.is_dir():
        raise DataError(f"{r}: not a folder; labels_from_folders expects root/<label>/<slide files>")
    records = []
    for info in find_slides(r, metadata=False):
        path = Path(info.path)
        if path.parent == r:
            raise DataError(f"{path}: slide directly in {r} has no label folder; move it to {r}/<label>/")
        records.append({"slide_id": info.slide_id, "label": path.parent.name, "path": str(path)})
    if not records:
        raise DataError(f"{r}: no slides found under it")
    df = pd.DataFrame.from_records(records)
    dup = df[df.duplicated("slide_id", keep=False)]
    if len(dup):
        conflicting = dup.groupby("slide_id")["label"].nunique()
        bad = sorted(conflicting[conflicting > 1].index)
        if bad:
            raise DataError(f"{r}: slide id(s) {bad} appear under several label folders; keep each slide in one")
        df = df.drop_duplicates("slide_id")
    df["label"] = _as_int_if_all_int(df["label"].tolist())
    df.attrs["wsi_lab"] = {"labels_source": str(r)}
    return df.reset_index(drop=True)


def make_label_index(labels) -> dict[str, int]:
    """``{class name: index}`` over the distinct labels, sorted (numerically when all are ints)."""
    values = list(pd.unique(pd.Series(list(labels)).dropna()))
    try:
        ordered = sorted(values)
    except TypeError:
        ordered = sorted(values, key=str)
    return {label_key(v): i for i, v in enumerate(ordered)}


def attach_labels(table: pd.DataFrame, labels: pd.DataFrame | str | os.PathLike,
                  on_missing: str = "error") -> pd.DataFrame:
    """A copy of ``table`` with a ``label`` column taken from ``labels`` (a DataFrame from
    :func:`read_labels` or a CSV path) by ``slide_id``; a ``patient_id`` given in the labels replaces
    the table's. Slides in the labels but not in the table: :class:`UnknownSlidesWarning` listing them.
    Table slides without a label: :class:`DataError` listing them, or dropped when ``on_missing="drop"``.
    Records ``attrs["wsi_lab"]["label_index"]`` (sorted class names -> 0..K-1)."""
    if on_missing not in ("error", "drop"):
        raise InvalidParameterError(f"on_missing must be 'error' or 'drop', got {on_missing!r}")
    source = None
    if not isinstance(labels, pd.DataFrame):
        source = str(labels)
        labels = read_labels(labels)
    else:
        source = (labels.attrs.get("wsi_lab") or {}).get("labels_source")
    require_columns(table, ("slide_id",), "attach_labels")
    if "slide_id" not in labels.columns or "label" not in labels.columns:
        raise DataError(f"labels need columns slide_id and label; got {list(labels.columns)}")
    where = f" ({source})" if source else ""
    lab = labels.dropna(subset=["label"]).copy()
    lab["slide_id"] = lab["slide_id"].astype(str)
    conflicts = lab.groupby("slide_id")["label"].nunique()
    if (conflicts > 1).any():
        raise DataError(f"labels{where} give several labels to slide(s) {sorted(conflicts[conflicts > 1].index)}")
    lab = lab.drop_duplicates("slide_id").set_index("slide_id")

    table_slides = set(map(str, pd.unique(table["slide_id"])))
    unknown = sorted(set(lab.index) - table_slides)
    if unknown:
        msg = (f"labels{where} name {len(unknown)} slide(s) not in the table, ignored: "
               f"{unknown[:20]}{' ...' if len(unknown) > 20 else ''}")
        log.warning("%s", msg)
        warnings.warn(msg, UnknownSlidesWarning, stacklevel=2)
    unlabelled = sorted(table_slides - set(lab.index))
    if unlabelled and on_missing == "error":
        raise DataError(f"{len(unlabelled)} slide(s) in the table have no label{where}: "
                        f"{unlabelled[:20]}{' ...' if len(unlabelled) > 20 else ''}; add them to the labels "
                        "or pass on_missing='drop'")

    out = table.copy()
    out.attrs = copy.deepcopy(table.attrs)
    sids = out["slide_id"].astype(str)
    if unlabelled:
        log.info("dropping %d unlabelled slide(s): %s", len(unlabelled), unlabelled)
        keep = ~sids.isin(unlabelled)
        out, sids = out[keep].reset_index(drop=True), sids[keep].reset_index(drop=True)
        if out.empty:
            raise DataError(f"no slide of the table has a label{where}; nothing left after on_missing='drop'")
    out["label"] = sids.map(lab["label"]).to_numpy()
    if "patient_id" in lab.columns:
        given = sids.map(lab["patient_id"])
        if "patient_id" in out.columns:
            out["patient_id"] = given.where(given.notna(), out["patient_id"]).to_numpy()
        else:
            fallback = sids.map(default_patient_id)
            out["patient_id"] = given.where(given.notna(), fallback).to_numpy()
    elif "patient_id" not in out.columns:
        out["patient_id"] = sids.map(default_patient_id).to_numpy()
    if all(isinstance(v, int) for v in out["label"].tolist()):
        out["label"] = out["label"].astype("int64")
    meta = dict(out.attrs.get("wsi_lab") or {})
    # over every class in the labels, not just those left in this table: stable across subsets
    meta["label_index"] = make_label_index(lab["label"])
    if source:
        meta["labels_source"] = source
    out.attrs["wsi_lab"] = meta
    return out
