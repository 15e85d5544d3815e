"""What a tiling run will do, before it runs: one :class:`PlanRow` per slide (the parameters that apply
to it, overrides included) and the number of tiles it is expected to keep (from the coarse plan: the
tissue mask and the grid, no tile pixels read). Widgets render these rows; they compute nothing."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from wsi_lab.tiling.params import TilingParams

__all__ = ["PlanRow", "plan_rows", "expected_tiles"]


@dataclass(frozen=True)
class PlanRow:
    """One slide of a planned run: its id and path, the parameters used, whether they are an override."""

    slide_id: str
    path: str
    params: TilingParams
    override: bool

    @property
    def threshold(self) -> float | None:
        mp = self.params.method_params
        return mp.get("threshold", mp.get("background_threshold"))

    def settings(self) -> dict[str, Any]:
        """The settings a person checks before Start (units in the keys)."""
        p = self.params
        return {"tile px": p.tile_size, "µm/px": "native" if p.mpp is None and p.level is None else
                (p.mpp if p.mpp is not None else f"level {p.level}"),
                "method": p.method or "none (every tile)", "threshold": "auto" if self.threshold is None else self.threshold,
                "min tissue": p.min_tissue, "two-stage": "no" if p.two_stage is None else f"{p.two_stage.coarse}:{p.two_stage.fine}",
                "source": "override" if self.override else "defaults"}


def plan_rows(slides: Sequence[str | os.PathLike], params: TilingParams,
              overrides: Mapping[str, TilingParams] | None = None) -> list[PlanRow]:
    """The parameters each slide will be tiled with (``overrides`` by slide id or path win)."""
    from wsi_lab.slide import slide_id

    overrides = overrides or {}
    rows = []
    for s in slides:
        path = str(getattr(s, "path", s))
        sid = slide_id(path)
        own = overrides.get(sid) or overrides.get(path)
        rows.append(PlanRow(sid, path, (own or params).validate(), own is not None))
    return rows


def expected_tiles(path: str | os.PathLike, params: TilingParams) -> int:
    """Tiles ``params`` keep on the slide at ``path`` after the coarse pass (mask + grid, as
    :func:`~wsi_lab.tiling.plan_tiles`); with two-stage filtering the fine pass may keep fewer."""
    from wsi_lab.slide import open_slide
    from wsi_lab.tiling.grid import plan_tiles

    p = params.validate()
    with open_slide(path, backend=p.backend, mpp=p.slide_mpp, mpp_only_if_missing=True) as s:
        mask = p.method if p.two_stage is None else None
        table = plan_tiles(s, p.tile_size, p.mpp, p.level, p.overlap, mask, p.min_tissue, p.two_stage,
                           mask_downsample=p.mask_downsample, method_params=p.method_params)
    return len(table)
