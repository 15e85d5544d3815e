"""Review decisions: a pathologist accepts or relabels a tile, a set of tiles or a drawn region, with who
and when; undo; saved atomically as they are made (``decisions.parquet`` plus one QuPath GeoJSON per
slide); reloaded by a new :class:`DecisionStore` on the same folder (after a kernel restart); and
:func:`apply_decisions` makes them the ``label`` column of the next training table.

Tiles are identified by ``(slide_id, x, y)`` (level-0 pixels of the tile's top-left corner). Polygons
are sequences of level-0 ``(x, y)`` vertices; a tile belongs to a region when its centre is inside.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wsi_lab.errors import DataError, InvalidParameterError

log = logging.getLogger(__name__)

__all__ = ["DecisionStore", "apply_decisions", "tiles_in_polygon", "DECISION_COLUMNS", "ACTIONS", "SOURCES"]

ACTIONS = ("accept", "relabel")
SOURCES = ("tile", "set", "region")
DECISION_COLUMNS = ("decision", "batch", "slide_id", "x", "y", "size", "label", "previous", "action", "source",
                    "region", "reviewer", "time", "undone")
PARQUET = "decisions.parquet"
_KEY = ["slide_id", "x", "y"]


def default_reviewer() -> str:
    """Who is reviewing: ``$WSI_LAB_REVIEWER``, else the login name."""
    name = os.environ.get("WSI_LAB_REVIEWER")
    if name:
        return name
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return "unknown"


def _empty() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype=t) for c, t in (
        ("decision", "int64"), ("batch", "int64"), ("slide_id", "object"), ("x", "int64"), ("y", "int64"),
        ("size", "float64"), ("label", "object"), ("previous", "object"), ("action", "object"),
        ("source", "object"), ("region", "object"), ("reviewer", "object"),
        ("time", "datetime64[ns, UTC]"), ("undone", "bool"))})
    return frame


def tiles_in_polygon(table: pd.DataFrame, polygon: Sequence[Sequence[float]], slide_id: str | None = None) -> pd.DataFrame:
    """The rows of ``table`` (of ``slide_id`` when given) whose tile centre lies inside ``polygon``
    (level-0 ``(x, y)`` vertices, at least three; even-odd rule, vectorised over tiles and edges)."""
    from wsi_lab.overlays import tile_extent

    ring = np.asarray(polygon, float)
    if ring.ndim != 2 or ring.shape[1] != 2 or len(ring) < 3 or not np.isfinite(ring).all():
        raise InvalidParameterError(f"a region needs at least three finite (x, y) vertices, got {np.shape(polygon)}")
    rows = table if slide_id is None else table[table["slide_id"].astype(str) == str(slide_id)]
    if not len(rows):
        return rows
    half = tile_extent(rows) / 2.0
    cx = rows["x"].to_numpy(float) + half
    cy = rows["y"].to_numpy(float) + half
    inside = np.zeros(len(rows), bool)
    a, b = ring, np.roll(ring, -1, axis=0)
    for (ax, ay), (bx, by) in zip(a, b):  # one pass per edge, vectorised over tiles
        if ay == by:
            continue
        crosses = (ay > cy) != (by > cy)
        xs = ax + (cy - ay) * (bx - ax) / (by - ay)
        inside ^= crosses & (cx < xs)
    return rows[inside]


def _coerce_rows(rows: Any) -> pd.DataFrame:
    if isinstance(rows, pd.Series):
        rows = rows.to_frame().T
    if not isinstance(rows, pd.DataFrame):
        raise InvalidParameterError(f"decisions are made on TileTable rows (a DataFrame or a row), got {type(rows).__name__}")
    missing = [c for c in _KEY if c not in rows.columns]
    if missing:
        raise InvalidParameterError(f"tile rows need columns {_KEY}; missing {missing}")
    return rows


class DecisionStore:
    """The review decisions kept in ``folder``: every change is written at once (atomically) to
    ``folder/decisions.parquet`` and to ``folder/<slide_id>.geojson`` (QuPath: *File → Import objects*).
    A new store on the same folder reloads them. ``reviewer`` defaults to :func:`default_reviewer`.

    ``decisions`` holds every decision made, undone ones included (column ``undone``); :meth:`effective`
    the last standing decision of each tile."""

    def __init__(self, folder: str | os.PathLike, reviewer: str | None = None) -> None:
        self.folder = Path(folder).expanduser()
        self.reviewer = reviewer or default_reviewer()
        self._decisions = self._load()
        self._effective: pd.DataFrame | None = None

    @property
    def decisions(self) -> pd.DataFrame:
        """Every decision made (undone ones too), in the order made."""
        return self._decisions

    @decisions.setter
    def decisions(self, frame: pd.DataFrame) -> None:
        self._decisions = frame
        self._effective = None

    # -- persistence ---------------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        """The Parquet file of the decisions."""
        return self.folder / PARQUET

    def geojson_path(self, slide_id: str) -> Path:
        """The QuPath GeoJSON of one slide's decisions."""
        return self.folder / f"{slide_id}.geojson"

    def _load(self) -> pd.DataFrame:
        if not self.path.exists():
            return _empty()
        try:
            frame = pd.read_parquet(self.path)
        except Exception as exc:
            raise DataError.at(self.path, f"the review decisions cannot be read ({type(exc).__name__}: {exc}); "
                                          "move the file away to start afresh (nothing was changed)") from exc
        missing = [c for c in DECISION_COLUMNS if c not in frame.columns]
        if missing:
            raise DataError.at(self.path, f"not a review decisions file: columns {missing} are missing")
        return frame[list(DECISION_COLUMNS)].reset_index(drop=True)

    def _save(self, slides: Iterable[str]) -> None:
        from wsi_lab.io import atomic_path, atomic_write_bytes

        with atomic_path(self.path) as tmp:
            self.decisions.to_parquet(tmp, index=False)
        for sid in sorted(set(map(str, slides))):
            atomic_write_bytes(self.geojson_path(sid), json.dumps(self.geojson(sid), separators=(",", ":")).encode())

    # -- decisions -----------------------------------------------------------------------------------
    def _record(self, rows: pd.DataFrame, labels: Sequence[Any], action: str, source: str,
                region: Sequence[Sequence[float]] | None = None, previous_column: str | None = "pred") -> int:
        from wsi_lab.overlays import tile_extent

        if action not in ACTIONS or source not in SOURCES:
            raise InvalidParameterError(f"action must be one of {ACTIONS} and source one of {SOURCES}")
        if not len(rows):
            raise InvalidParameterError("no tiles to decide on (the selection or region holds none)")
        labels = [None if lab is None or (isinstance(lab, float) and np.isnan(lab)) else str(lab) for lab in labels]
        if any(lab is None or lab == "" for lab in labels):
            raise InvalidParameterError("every decided tile needs a label (accepting a tile without a prediction "
                                        f"in column {previous_column!r} is not possible: relabel it instead)")
        batch = int(self.decisions["batch"].max()) + 1 if len(self.decisions) else 0
        first = int(self.decisions["decision"].max()) + 1 if len(self.decisions) else 0
        prev = (rows[previous_column].astype(str).where(rows[previous_column].notna()).to_numpy(object)
                if previous_column and previous_column in rows.columns else np.full(len(rows), None, object))
        try:
            size = tile_extent(rows)
        except InvalidParameterError:
            size = np.full(len(rows), np.nan)
        new = pd.DataFrame({
            "decision": np.arange(first, first + len(rows), dtype=np.int64), "batch": np.int64(batch),
            "slide_id": rows["slide_id"].astype(str).to_numpy(object), "x": rows["x"].to_numpy(np.int64),
            "y": rows["y"].to_numpy(np.int64), "size": np.asarray(size, float), "label": np.asarray(labels, object),
            "previous": prev, "action": action, "source": source,
            "region": json.dumps([[float(a), float(b)] for a, b in region]) if region is not None else None,
            "reviewer": self.reviewer, "time": pd.Timestamp.now(tz="UTC"), "undone": False})
        before = self.decisions
        self.decisions = pd.concat([before, new], ignore_index=True) if len(before) else new.astype(_empty().dtypes)
        try:
            self._save(new["slide_id"].unique())
        except BaseException:
            self.decisions = before  # the files still hold `before`: memory and disk agree
            raise
        log.info("review: %s %d tile(s) as %s (batch %d)", action, len(new), sorted(set(labels)), batch)
        return batch

    def accept(self, rows: Any, column: str = "pred", source: str | None = None) -> int:
        """Accept the model's answer (``column``, default ``pred``) for ``rows`` (a TileTable row or rows);
        returns the batch id (what :meth:`undo` takes back)."""
        rows = _coerce_rows(rows)
        if column not in rows.columns:
            raise InvalidParameterError(f"nothing to accept: the rows have no {column!r} column (a classifier's "
                                        "prediction); relabel them instead")
        return self._record(rows, list(rows[column]), "accept", source or ("tile" if len(rows) == 1 else "set"),
                            previous_column=column)

    def relabel(self, rows: Any, label: str, source: str | None = None, previous_column: str = "pred") -> int:
        """Give ``rows`` the label ``label``; returns the batch id."""
        rows = _coerce_rows(rows)
        return self._record(rows, [label] * len(rows), "relabel", source or ("tile" if len(rows) == 1 else "set"),
                            previous_column=previous_column)

    def decide_region(self, table: pd.DataFrame, polygon: Sequence[Sequence[float]], label: str | None = None,
                      slide_id: str | None = None, column: str = "pred") -> int:
        """Relabel (``label``) or, with ``label=None``, accept every tile of ``table`` (of ``slide_id``) whose
        centre is inside ``polygon`` (level-0 vertices); the polygon is kept and exported as an annotation."""
        if slide_id is None:
            ids: list[str] = sorted(set(table["slide_id"].astype(str))) if "slide_id" in table.columns else []
            if len(ids) != 1:
                raise InvalidParameterError(f"the table holds {len(ids)} slides: say which one the region is on (slide_id=)")
            slide_id = str(ids[0])
        rows = tiles_in_polygon(table, polygon, slide_id)
        if label is None:
            if column not in rows.columns:
                raise InvalidParameterError(f"nothing to accept: the table has no {column!r} column")
            return self._record(rows, list(rows[column]), "accept", "region", polygon, previous_column=column)
        return self._record(rows, [label] * len(rows), "relabel", "region", polygon, previous_column=column)

    def undo(self) -> int | None:
        """Take back the last batch that still stands; returns its id, or ``None`` when nothing is left."""
        standing = self.decisions.loc[~self.decisions["undone"].astype(bool), "batch"]
        if standing.empty:
            return None
        batch = int(standing.max())
        hit = self.decisions["batch"] == batch
        before = self.decisions
        self.decisions = before.copy()
        self.decisions.loc[hit, "undone"] = True
        try:
            self._save(before.loc[hit, "slide_id"].unique())
        except BaseException:
            self.decisions = before
            raise
        return batch

    # -- views ---------------------------------------------------------------------------------------
    def effective(self, slide_id: str | None = None) -> pd.DataFrame:
        """The standing decision of each tile (the last one not undone), one row per ``(slide_id, x, y)``."""
        if self._effective is None:
            d = self.decisions[~self.decisions["undone"].astype(bool)]
            self._effective = d.sort_values("decision").drop_duplicates(_KEY, keep="last").reset_index(drop=True)
        if slide_id is None:
            return self._effective
        return self._effective[self._effective["slide_id"] == str(slide_id)].reset_index(drop=True)

    def __len__(self) -> int:
        return len(self.effective())

    def geojson(self, slide_id: str) -> dict[str, Any]:
        """One slide's standing decisions as a QuPath FeatureCollection: a ``tile`` feature per decided tile
        (classified by its label; ``reviewer``, ``time``, ``action``, ``previous`` as properties) and an
        ``annotation`` per standing region."""
        from wsi_lab.infer.geojson import tiles_to_geojson

        eff = self.effective(slide_id)
        frame = pd.DataFrame({"x": eff["x"], "y": eff["y"], "size0": eff["size"].fillna(1.0), "label": eff["label"]})
        labels = sorted(set(eff["label"].astype(str)))
        gj = tiles_to_geojson(frame, column="label", measurements=[])
        for feat, row in zip(gj["features"], eff.to_dict("records")):
            feat["properties"].update(reviewer=row["reviewer"], time=pd.Timestamp(row["time"]).isoformat(),
                                      action=row["action"], previous=row["previous"], source=row["source"])
        palette = {f["properties"]["classification"]["name"]: f["properties"]["classification"]["color"]
                   for f in gj["features"]}
        regions = self.decisions[(self.decisions["slide_id"] == str(slide_id)) & self.decisions["region"].notna()
                                 & ~self.decisions["undone"].astype(bool)].drop_duplicates("batch")
        for row in regions.to_dict("records"):
            ring = json.loads(str(row["region"]))
            ring = ring + ring[:1] if ring[0] != ring[-1] else ring
            name = str(row["label"]) if row["action"] == "relabel" else "Reviewed"
            color = palette.get(name) or _region_color(name, labels)
            gj["features"].append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                                   "properties": {"objectType": "annotation", "classification": {"name": name, "color": color},
                                                  "reviewer": row["reviewer"], "time": pd.Timestamp(row["time"]).isoformat(),
                                                  "action": row["action"]}})
        return gj


def _region_color(name: str, labels: list[str]) -> list[int]:
    from wsi_lab.overlays import category_colors

    hexes = category_colors(len(labels) + 1)
    c = hexes[labels.index(name)] if name in labels else hexes[-1]
    c = c.lstrip("#")
    return [int(c[i:i + 2], 16) for i in (0, 2, 4)]


def apply_decisions(table: pd.DataFrame, decisions: DecisionStore | pd.DataFrame | str | os.PathLike,
                    column: str = "label") -> pd.DataFrame:
    """A copy of ``table`` whose ``column`` (default ``label``, the training label) holds the reviewed label of
    every decided tile; other rows keep theirs (or ``None`` when the table had no such column).
    ``decisions``: a :class:`DecisionStore`, its folder or Parquet file, or a frame of standing decisions.
    ``attrs["wsi_lab"]["review"]`` records how many labels came from the review."""
    if isinstance(decisions, DecisionStore):
        eff = decisions.effective()
    elif isinstance(decisions, pd.DataFrame):
        eff = decisions
    else:
        p = Path(decisions)
        eff = DecisionStore(p.parent if p.suffix == ".parquet" else p).effective()
    missing = [c for c in (*_KEY, "label") if c not in eff.columns]
    if missing:
        raise InvalidParameterError(f"decisions need columns {[*_KEY, 'label']}; missing {missing}")
    if "undone" in eff.columns:
        eff = eff[~eff["undone"].astype(bool)]
    if "decision" in eff.columns:
        eff = eff.sort_values("decision")
    eff = eff.drop_duplicates(_KEY, keep="last")
    out = table.copy()
    key = pd.MultiIndex.from_arrays([out["slide_id"].astype(str), out["x"].astype(np.int64), out["y"].astype(np.int64)])
    dkey = pd.MultiIndex.from_arrays([eff["slide_id"].astype(str), eff["x"].astype(np.int64), eff["y"].astype(np.int64)])
    pos = dkey.get_indexer(key)
    hit = pos >= 0
    current = out[column].astype(object).to_numpy() if column in out.columns else np.full(len(out), None, object)
    current = current.copy()
    current[hit] = eff["label"].astype(str).to_numpy(object)[pos[hit]]
    out[column] = current
    meta = dict(out.attrs.get("wsi_lab") or {})
    meta["review"] = {"labels_from_review": int(hit.sum()), "decisions": int(len(eff))}
    out.attrs = {**out.attrs, "wsi_lab": meta}
    return out
