"""Training-side benchmark: data-loader tiles/s, model steps/s on the CPU, torchrun scaling.

    python benchmarks/training.py [--quick] [--workers 2] [--copies 8] [--no-torchrun]

Prints one table. Loaders: one epoch over every 64² tile of ``--copies`` copies of
CMU-1-Small-Region.svs (224²: 4× as many copies with ``--quick``, else 8×) (separate files, so no loader can reuse one copy's decoded tiles for another:
an epoch decodes every source tile of every copy), with ``--workers`` DataLoader workers that start
fresh each epoch (as the training loop's ``persistent_workers=False``), batch 128; the median of the
epochs run. Cases: the batched ``TileDataset`` behind ``tile_loader`` (locality-shuffled, each source
tile decoded once per epoch; uint8 and float32 batches), the same dataset read one item at a time (how
it read before), the usual user code (a plain ``openslide`` + ``torch.utils.data.Dataset``),
materialised JPEG tiles read with PIL, and the raw JPEG decode limit (every source tile of level 0
decoded once on one core; tiles/s = decoded pixels / tile pixels). Each case also gets a row in
tiles per CPU-second (main process + its DataLoader workers): on a machine shared with other work the
wall-clock rates fall with the load, the CPU figures much less; on 2 free cores a loader that keeps
both busy reaches about 2 × its tiles per CPU-second. Models: VAE (64², batch 64) and
classifiers (small_cnn 32², resnet18 224²) training steps/s. torchrun: the same small_cnn job (generated
slides, 32² tiles) launched with 1 process and with 2 (``backend="torchrun"``), training tiles/s of the
last epoch. ``×`` compares with the row named in ``vs``, measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from wsi_lab.data.dataset import TileDataset, tile_loader
from wsi_lab.slide import open_slide

SLIDES = Path(os.environ.get("WSI_LAB_SHARED_SLIDES", Path(__file__).resolve().parents[2] / "shared" / "data" / "slides"))
CMU = SLIDES / "CMU-1-Small-Region.svs"


def grid_table(tile: int, paths: list[Path] | None = None):
    """Every ``tile``² tile (stride ``tile``, level 0) of each slide in ``paths`` (default: CMU once)."""
    import pandas as pd

    paths = paths or [CMU]
    with open_slide(paths[0]) as s:
        w, h = s.dimensions
    ys, xs = np.mgrid[0:h - tile + 1:tile, 0:w - tile + 1:tile]
    parts, meta = [], {}
    for i, p in enumerate(paths):
        sid = f"cmu{i}"
        meta[sid] = {"path": str(p)}
        parts.append(pd.DataFrame({"slide_id": sid, "patient_id": sid, "x": xs.ravel(), "y": ys.ravel(),
                                   "level": 0, "read_size": tile, "tile_size": tile, "mpp": 0.499,
                                   "tissue_fraction": 1.0}))
    t = pd.concat(parts, ignore_index=True)
    t.attrs["wsi_lab"] = {"slides": meta}
    return t


def slide_copies(folder: Path, n: int) -> list[Path]:
    """``n`` copies of CMU as separate files (the OS caches their bytes alike for every loader)."""
    out = []
    for i in range(n):
        p = folder / f"cmu{i}.svs"
        shutil.copyfile(CMU, p)
        out.append(p)
    return out


class OpenSlideDataset(torch.utils.data.Dataset):
    """What users usually write: OpenSlide per worker, read_region -> RGB -> tensor."""

    def __init__(self, paths: list[str], coords: np.ndarray, tile: int) -> None:
        self.paths, self.coords, self.tile, self.slides = paths, coords, tile, {}

    def __len__(self) -> int:
        return len(self.coords)

    def __getitem__(self, i: int):
        import openslide

        path = self.paths[i]
        if path not in self.slides:
            self.slides[path] = openslide.OpenSlide(path)
        x, y = self.coords[i]
        img = self.slides[path].read_region((int(x), int(y)), 0, (self.tile, self.tile)).convert("RGB")
        return torch.from_numpy(np.asarray(img)).permute(2, 0, 1).float().div_(255), 0


class PerItem(torch.utils.data.Dataset):
    """A TileDataset read one item at a time (no batch reads): how TileDataset read before."""

    def __init__(self, ds: TileDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        return self.ds[i]


class JpegFolderDataset(torch.utils.data.Dataset):
    def __init__(self, files: list[Path]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image

        arr = np.asarray(Image.open(self.files[i]).convert("RGB"))
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255), 0


def _cpu_s() -> float:
    """CPU seconds of this process plus its finished children (the DataLoader workers of past epochs)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def loader_rate(ds, workers: int, epochs: int, batch: int = 128, fast: bool = False, seed: int = 0
                ) -> tuple[float, float]:
    """``(tiles/s, tiles per CPU-second)``: medians over ``epochs`` epochs (fresh workers each epoch, as the
    training loop has them). The CPU figure counts the main process and its workers, so it holds on a
    loaded machine where wall-clock rates do not."""
    rates, cpu_rates = [], []
    for epoch in range(epochs):
        if fast:
            loader = tile_loader(ds, batch_size=batch, shuffle=True, seed=seed, num_workers=workers)
            loader.batch_sampler.set_epoch(epoch)  # type: ignore[union-attr]
        else:
            loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers, shuffle=False)
        c0, t0 = _cpu_s(), time.perf_counter()
        n = sum(len(x) for x, _ in loader)
        del loader  # workers exit and are reaped: their CPU time is counted
        rates.append(n / (time.perf_counter() - t0))
        cpu_rates.append(n / max(_cpu_s() - c0, 1e-9))
    return statistics.median(rates), statistics.median(cpu_rates)


def decode_limit(tile: int) -> float:
    """``(tiles/s, tiles per CPU-s)`` if every level-0 source tile (JPEG) is decoded exactly once: one core,
    imagecodecs."""
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
    t0, c0 = time.perf_counter(), time.process_time()
    px = 0
    for data in chunks:
        px += imagecodecs.jpeg_decode(data, tables=tables, colorspace=2, outcolorspace=2).shape[0] * page.tilewidth
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return px / dt / (tile * tile), px / max(cpu, 1e-9) / (tile * tile)


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


def torchrun_rates(folder: Path, quick: bool) -> list[tuple[str, float]]:
    """Training tiles/s (last epoch) of one small_cnn job: 1 process with 2 and with 1 intra-op threads, and
    2 processes under torchrun (which sets ``OMP_NUM_THREADS=1`` per process)."""
    from tests._traindata import make_cohort
    from wsi_lab.train import JobSpec, launch

    table = make_cohort(folder / "cohort", slides=2, tile_size=32, read_size=64, width=1024, height=1024)
    cases = [("1 process, 2 threads (local)", "local", 1, "2"), ("1 process, 1 thread (local)", "local", 1, "1"),
             ("2 processes × 1 thread (torchrun)", "torchrun", 2, "1")]
    out = []
    for i, (name, backend, nproc, threads) in enumerate(cases):
        spec = JobSpec(task="classify", table=str(table), out=str(folder / f"run-{i}"), model="small_cnn",
                       epochs=2 if quick else 3, batch_size=64, backend=backend, nproc=nproc, seed=0)
        job = launch(spec, env={"OMP_NUM_THREADS": threads})
        job.wait(timeout=900)
        m = job.metrics()
        train = m[m["split"] == "train"] if len(m) else m
        if job.status().value != "done" or train.empty:
            raise SystemExit(f"torchrun benchmark job failed ({name}): {job.logs(tail=20)}")
        out.append((f"small_cnn 32² job, {name}", float(train["tiles_per_s"].iloc[-1])))
    return out


def loader_rows(add, tile: int, table, tmp: Path, workers: int, epochs: int) -> None:
    """The loader cases at one tile size: tiles/s and tiles per CPU-second of each."""
    from wsi_lab.data.export_jpeg import export_jpeg

    limit = f"raw JPEG decode limit {tile}² (1 core)"
    ours = f"TileDataset batched {tile}², uint8, locality shuffle, {workers} workers"
    slide_of = {sid: v["path"] for sid, v in table.attrs["wsi_lab"]["slides"].items()}
    per_row = [slide_of[s] for s in table["slide_id"]]
    jpeg_dir = tmp / f"jpeg{tile}"
    export_jpeg(table, jpeg_dir, workers=2)
    files = sorted(jpeg_dir.rglob("*.jpg"))
    cases = [
        (ours, lambda: loader_rate(TileDataset(table, dtype="uint8"), workers, epochs, fast=True), limit),
        (f"TileDataset batched {tile}², float32", lambda: loader_rate(TileDataset(table), workers, epochs,
                                                                     fast=True), ours),
        (f"TileDataset per item {tile}² (before)", lambda: loader_rate(PerItem(TileDataset(table)),
                                                                      workers, epochs), ours),
        (f"plain openslide Dataset {tile}²", lambda: loader_rate(
            OpenSlideDataset(per_row, table[["x", "y"]].to_numpy(), tile), workers, epochs), ours),
        (f"materialised JPEG tiles {tile}²", lambda: loader_rate(JpegFolderDataset(files), workers,
                                                                epochs), ours),
        (limit, lambda: decode_limit(tile), ""),
    ]
    for case, measure, vs in cases:
        rate, cpu_rate = measure()
        add(case, rate, "tiles/s", vs)
        add(case + " ", cpu_rate, "tiles/CPU-s", (vs + " ") if vs else "")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--copies", type=int, default=8, help="separate copies of CMU per epoch (64² tiles)")
    ap.add_argument("--no-torchrun", action="store_true")
    ap.add_argument("--no-loaders", action="store_true")
    ap.add_argument("--no-models", action="store_true")
    args = ap.parse_args()
    if not CMU.exists():
        sys.exit(f"{CMU} not found (set WSI_LAB_SHARED_SLIDES)")
    torch.set_num_threads(2)
    rows: list[tuple[str, float, str, str]] = []
    epochs = 2 if args.quick else 3

    def add(case: str, value: float, unit: str, vs: str = "") -> None:
        rows.append((case, value, unit, vs))
        print(f"  {case}: {value:,.1f} {unit}", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="wsi-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        # 224² tiles: 4x (quick) or 8x the copies, so that an epoch (117 tiles per copy) is long enough
        # for the per-epoch cost of starting workers not to dominate
        copies = slide_copies(tmp, max(args.copies, 1) * (4 if args.quick else 8))
        for tile in () if args.no_loaders else (64, 224):
            paths = copies[: args.copies] if tile == 64 else copies
            loader_rows(add, tile, grid_table(tile, paths), tmp, args.workers, epochs)
        if not args.no_torchrun:
            runs = torchrun_rates(tmp, args.quick)
            for name, rate in runs:
                add(name, rate, "tiles/s", "" if name == runs[1][0] else runs[1][0])

    if not args.no_models:
        model_rows(add, 3 if args.quick else 10)
    print_table(rows)


def model_rows(add, steps: int) -> None:
    """Training steps/s of the VAE and the classifiers on random batches."""
    from torch.nn import functional as F

    from wsi_lab.models import VAE, TileClassifier, vae_loss

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


def print_table(rows: list[tuple[str, float, str, str]]) -> None:
    by_name = {r[0]: r[1] for r in rows}
    width = max(len(r[0]) for r in rows) if rows else 4
    print(f"\n{'case':<{width}} {'value':>10}  {'unit':<8} {'×':>6}  vs")
    for case, value, unit, vs in rows:
        ratio = f"{value / by_name[vs]:.2f}" if vs else ""
        print(f"{case:<{width}} {value:>10,.1f}  {unit:<8} {ratio:>6}  {vs}")


if __name__ == "__main__":
    main()
