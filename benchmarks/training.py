"""Training-side benchmark: data-loader tiles/s and model steps/s on the CPU.

    python benchmarks/training.py [--quick] [--workers 2]

Prints one table. Loaders (one epoch each over every 64² or 224² tile of CMU-1-Small-Region.svs, with
``--workers`` DataLoader workers, batch 128): ``TileDataset`` over the TileTable, the usual user code (a
plain ``openslide`` + ``torch.utils.data.Dataset``), materialised JPEG tiles read with PIL, and the raw
JPEG decode limit (every source tile of level 0 decoded once; tiles/s = decoded pixels / tile pixels).
Models: VAE (64², batch 64) and classifiers (small_cnn 32², resnet18 224²) training steps/s.
``×`` compares with the row named in ``vs`` measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from wsi_lab.data.dataset import TileDataset
from wsi_lab.slide import open_slide

SLIDES = Path(os.environ.get("WSI_LAB_SHARED_SLIDES", Path(__file__).resolve().parents[2] / "shared" / "data" / "slides"))
CMU = SLIDES / "CMU-1-Small-Region.svs"


def grid_table(tile: int, copies: int = 1):
    import pandas as pd

    with open_slide(CMU) as s:
        w, h = s.dimensions
    ys, xs = np.mgrid[0:h - tile + 1:tile, 0:w - tile + 1:tile]
    parts = []
    for _ in range(copies):
        parts.append(pd.DataFrame({"slide_id": "cmu", "patient_id": "cmu", "x": xs.ravel(), "y": ys.ravel(),
                                   "level": 0, "read_size": tile, "tile_size": tile, "mpp": 0.499,
                                   "tissue_fraction": 1.0}))
    t = pd.concat(parts, ignore_index=True)
    t.attrs["wsi_lab"] = {"slides": {"cmu": {"path": str(CMU)}}}
    return t


class OpenSlideDataset(torch.utils.data.Dataset):
    """What users usually write: OpenSlide per worker, read_region -> RGB -> tensor."""

    def __init__(self, path: Path, coords: np.ndarray, tile: int) -> None:
        self.path, self.coords, self.tile, self.slide = str(path), coords, tile, None

    def __len__(self) -> int:
        return len(self.coords)

    def __getitem__(self, i: int):
        import openslide

        if self.slide is None:
            self.slide = openslide.OpenSlide(self.path)
        x, y = self.coords[i]
        img = self.slide.read_region((int(x), int(y)), 0, (self.tile, self.tile)).convert("RGB")
        return torch.from_numpy(np.asarray(img)).permute(2, 0, 1).float().div_(255), 0


class JpegFolderDataset(torch.utils.data.Dataset):
    def __init__(self, files: list[Path]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image

        arr = np.asarray(Image.open(self.files[i]).convert("RGB"))
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255), 0


def loader_rate(ds, workers: int, batch: int = 128) -> float:
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers, shuffle=False)
    t0 = time.perf_counter()
    n = sum(len(x) for x, _ in loader)
    return n / (time.perf_counter() - t0)


def decode_limit(tile: int) -> float:
    """Tiles/s if every level-0 source tile (JPEG) is decoded exactly once: one core, imagecodecs."""
    import imagecodecs
    import tifffile

    with tifffile.TiffFile(CMU) as tf:
        page = tf.pages[0]
        fh = tf.filehandle
        chunks = []
        for off, cnt in zip(page.dataoffsets, page.databytecounts):
            fh.seek(off)
            chunks.append(fh.read(cnt))
        tables = page.jpegtables
    t0 = time.perf_counter()
    px = 0
    for data in chunks:
        px += imagecodecs.jpeg_decode(data, tables=tables, colorspace=2, outcolorspace=2).shape[0] * page.tilewidth
    dt = time.perf_counter() - t0
    return px / dt / (tile * tile)


def steps_per_s(model, x, y, loss_fn, steps: int) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for i in range(steps + 1):
        if i == 1:
            t0 = time.perf_counter()  # the first step warms up
        opt.zero_grad()
        loss_fn(model, x, y).backward()
        opt.step()
    return steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    if not CMU.exists():
        sys.exit(f"{CMU} not found (set WSI_LAB_SHARED_SLIDES)")
    torch.set_num_threads(2)
    rows: list[tuple[str, float, str, str]] = []

    def add(case: str, value: float, unit: str, vs: str = "") -> None:
        rows.append((case, value, unit, vs))
        print(f"  {case}: {value:,.1f} {unit}", file=sys.stderr)

    for tile in (64, 224):
        table = grid_table(tile, 1 if tile == 64 or args.quick else 4)
        coords = table[["x", "y"]].to_numpy()
        ours = f"TileDataset {tile}², {args.workers} workers"
        add(ours, loader_rate(TileDataset(table), args.workers), "tiles/s")
        add(f"plain openslide Dataset {tile}²", loader_rate(OpenSlideDataset(CMU, coords, tile), args.workers),
            "tiles/s", ours)
        from wsi_lab.data.export_jpeg import export_jpeg

        with tempfile.TemporaryDirectory(prefix="wsi-bench-") as tmp:
            export_jpeg(table.drop_duplicates(["x", "y"]), tmp, workers=2)
            files = sorted(Path(tmp).rglob("*.jpg"))
            files = (files * (len(table) // max(len(files), 1) + 1))[: len(table)]
            add(f"materialised JPEG tiles {tile}²", loader_rate(JpegFolderDataset(files), args.workers), "tiles/s", ours)
        add(f"raw JPEG decode limit {tile}² (1 core)", decode_limit(tile), "tiles/s", ours)

    from torch.nn import functional as F

    from wsi_lab.models import VAE, TileClassifier, vae_loss

    steps = 3 if args.quick else 10
    x64 = torch.rand(64, 3, 64, 64)

    def vloss(m, x, _y):
        r, mu, lv = m(x)
        return vae_loss(r, x, mu, lv)[0]

    def closs(m, x, y):
        return F.cross_entropy(m(x), y)

    add("VAE 64², batch 64", steps_per_s(VAE(), x64, None, vloss, steps), "steps/s")
    add("small_cnn 32², batch 64", steps_per_s(TileClassifier("small_cnn", 3, input_size=32), torch.rand(64, 3, 32, 32),
                                                torch.randint(0, 3, (64,)), closs, steps), "steps/s")
    add("resnet18 224², batch 16", steps_per_s(TileClassifier("resnet18", 3, input_size=224),
                                               torch.rand(16, 3, 224, 224), torch.randint(0, 3, (16,)), closs,
                                               max(2, steps // 3)), "steps/s")

    by_name = {r[0]: r[1] for r in rows}
    print(f"\n{'case':<44} {'value':>12}  {'unit':<8} {'×':>6}  vs")
    for case, value, unit, vs in rows:
        ratio = f"{value / by_name[vs]:.2f}" if vs else ""
        print(f"{case:<44} {value:>12,.1f}  {unit:<8} {ratio:>6}  {vs}")


if __name__ == "__main__":
    main()
