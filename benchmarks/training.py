"""Training-side benchmark: data-loader tiles/s, model steps/s on the CPU, torchrun scaling.

    python benchmarks/training.py [--quick] [--workers 2] [--copies 8] [--no-torchrun] [--sizes 64,224] [--no-peers] [--epochs N] [--areas 1,4]

Prints one table. Loaders: one epoch over every 64² tile of ``--copies`` copies of
CMU-1-Small-Region.svs (224²: 4× as many copies with ``--quick``, else 8×) (separate files, so no loader can reuse one copy's decoded tiles for another:
an epoch decodes every source tile of every copy), with ``--workers`` DataLoader workers, batch 128; the
median of the epochs run. Cases: the batched ``TileDataset`` behind ``tile_loader`` (locality-shuffled,
each source tile decoded once per epoch; uint8 batches with persistent workers, as the training loop has
them, counted after a warm-up epoch; uint8 and float32 with workers started fresh each epoch), the same dataset read one item at a time (how
it read before), the usual user code (a plain ``openslide`` + ``torch.utils.data.Dataset``),
materialised JPEG tiles read with PIL, and the raw JPEG decode limit: every source tile the table's
rows touch decoded once with imagecodecs, split over ``--workers`` processes (the same cores the
loader's workers get), in the same run and in alternation with the batched loader's epochs; its
tiles/s are the table's rows over that time. Each case also gets a row in tiles per CPU-second (main
process + its DataLoader workers): on a machine shared with other work the wall-clock rates fall with
the load, the CPU figures much less. The load average is printed before and after. Models: VAE (64², batch 64) and
classifiers (small_cnn 32², resnet18 224²) training steps/s. torchrun: the same small_cnn job (generated
slides, 32² tiles) launched with 1 process and with 2 (``backend="torchrun"``), training tiles/s of the
last epoch. ``×`` compares with the row named in ``vs``, measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import pickle
import resource
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from wsi_lab.data.dataset import TileDataset, locality_sampler, tile_loader
from wsi_lab.data.fast_loader import AREA, WorkerBatches
from wsi_lab.slide import open_slide

# the plain openslide Dataset below is the usual user code (a read-only PIL array into torch): no copy added
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

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
        self.paths, self.coords, self.tile = paths, coords, tile
        self.slides: dict[str, Any] = {}

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


def loader_epoch(ds, workers: int, epoch: int, batch: int = 128, fast: bool = False, seed: int = 0
                 ) -> tuple[int, float, float]:
    """``(tiles, wall s, CPU s)`` of one epoch with fresh workers (as the training loop has them). The CPU
    figure counts the main process and its workers, so it holds on a loaded machine where wall-clock
    rates do not."""
    if fast:
        loader = tile_loader(ds, batch_size=batch, shuffle=True, seed=seed, num_workers=workers)
        loader.batch_sampler.set_epoch(epoch)  # type: ignore[union-attr]
    else:
        loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers, shuffle=False)
    c0, t0 = _cpu_s(), time.perf_counter()
    n = sum(len(x) for x, _ in loader)
    del loader  # workers exit and are reaped: their CPU time is counted
    return n, time.perf_counter() - t0, _cpu_s() - c0


def _proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a live process, from ``/proc`` (0 where it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class PersistentEpochs:
    """The batched loader with ``persistent_workers=True`` (as the training loop builds it): the workers start
    once, in a warm-up epoch that is not counted (the decode limit's pool is warmed alike), and keep their
    open slides between epochs. :meth:`epoch` gives ``(tiles, wall s, CPU s)``, the CPU of the main process
    plus its live workers."""

    def __init__(self, ds, workers: int, batch: int = 128, seed: int = 0, area: int = AREA) -> None:
        self.loader = tile_loader(ds, batch_size=batch, shuffle=True, seed=seed, num_workers=workers,
                                  persistent_workers=workers > 0, area=area)
        self.epoch(10_000)  # warm-up: an epoch order not among the counted ones

    def _cpu(self) -> float:
        it = getattr(self.loader, "_iterator", None)
        pids = [w.pid for w in getattr(it, "_workers", [])]
        me = resource.getrusage(resource.RUSAGE_SELF)
        return me.ru_utime + me.ru_stime + sum(_proc_cpu_s(p) for p in pids)

    def epoch(self, epoch: int) -> tuple[int, float, float]:
        self.loader.batch_sampler.set_epoch(epoch)  # type: ignore[union-attr]
        c0, t0 = self._cpu(), time.perf_counter()
        n = sum(len(x) for x, _ in self.loader)
        return n, time.perf_counter() - t0, self._cpu() - c0

    def close(self) -> None:
        del self.loader


def decodes_per_row(ds, workers: int, epoch: int, batch: int = 128, seed: int = 0, area: int = AREA) -> float:
    """Source-tile decodes per row of one epoch as the loader's workers do them: each worker's batches
    (:class:`WorkerBatches` hands worker ``w`` batches ``w::workers``) read in order through a fresh copy of
    the dataset's batch reader (its own tile LRU, as in a worker process), in this process."""
    sampler = WorkerBatches(locality_sampler(ds, True, seed, area=area), batch, workers)
    sampler.set_epoch(epoch)
    batches, decodes = list(sampler), 0
    for w in range(max(workers, 1)):
        reader = pickle.loads(pickle.dumps(ds._batch))
        for b in batches[w::max(workers, 1)]:
            reader.read_batch(np.asarray(b))
        decodes += reader._tiles.misses
        reader.close()
    return decodes / max(len(ds), 1)


def rates(runs: list[tuple[int, float, float]]) -> tuple[float, float]:
    """``(tiles/s, tiles per CPU-second)``: medians over the runs."""
    return (statistics.median(n / dt for n, dt, _ in runs), statistics.median(n / max(c, 1e-9) for n, _, c in runs))


# -- the raw JPEG decode limit --------------------------------------------------------------------------
_CHUNKS: list[tuple[bytes, bytes | None, Any]] = []  # (tile bytes, JPEG tables, colour space), set before fork


def source_tiles(table) -> list[tuple[bytes, bytes | None, Any]]:
    """The stored bytes of every source tile the table's rows touch (each once per slide and level):
    what a loader must decode, at the least, for one epoch."""
    from wsi_lab.slide.raw_tiles import raw_level

    out = []
    slides = table.attrs["wsi_lab"]["slides"]
    for sid, rows in table.groupby("slide_id"):
        with open_slide(slides[sid]["path"]) as s:
            for level, sel in rows.groupby("level"):
                rl = raw_level(s, int(level))
                if rl is None:
                    raise SystemExit(f"{slides[sid]['path']} level {level}: no raw JPEG tiles (the limit needs them)")
                ds = s.level_downsamples[int(level)]
                need: set[int] = set()
                for x, y, rs in zip(sel["x"], sel["y"], sel["read_size"]):
                    lx, ly = int(x // ds), int(y // ds)
                    for ty in range(ly // rl.tile_height, (ly + int(rs) - 1) // rl.tile_height + 1):
                        need.update(ty * rl.across + tx
                                    for tx in range(lx // rl.tile_width, (lx + int(rs) - 1) // rl.tile_width + 1))
                out += [(data, rl.tables, rl.colorspace) for i in sorted(need) if (data := rl.raw(i)) is not None]
    return out


def _decode_range(span: tuple[int, int]) -> float:
    import imagecodecs

    c0 = time.process_time()
    for data, tables, cs in _CHUNKS[span[0]:span[1]]:
        imagecodecs.jpeg_decode(data, tables=tables, colorspace=cs, outcolorspace=2)
    return time.process_time() - c0


class DecodeLimit:
    """The raw JPEG decode limit of a table: every source tile its rows touch (:func:`source_tiles`) decoded
    once with imagecodecs (no file reads, no cutting, no hand-over), split over ``workers`` processes as
    the loader's workers split an epoch. A run gives ``(rows of the table, wall s, CPU s)``: the rate of a
    loader that did nothing but decode each source tile once."""

    def __init__(self, table, workers: int) -> None:
        import multiprocessing

        global _CHUNKS
        _CHUNKS = source_tiles(table)
        self.rows, self.tiles, self.workers = len(table), len(_CHUNKS), max(1, workers)
        bounds = np.linspace(0, self.tiles, self.workers + 1).round().astype(int)
        self.spans = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
        self.pool = multiprocessing.get_context("fork").Pool(self.workers)
        self.pool.map(_decode_range, [(0, 1)] * self.workers)  # workers started and warm

    def run(self) -> tuple[int, float, float]:
        t0 = time.perf_counter()
        cpu = sum(self.pool.map(_decode_range, self.spans, chunksize=1))
        return self.rows, time.perf_counter() - t0, cpu

    def close(self) -> None:
        self.pool.close()
        self.pool.join()


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


def loader_rows(add, tile: int, table, tmp: Path, workers: int, epochs: int, peers: bool = True,
                areas: tuple[int, ...] = (AREA,)) -> None:
    """The loader cases at one tile size: tiles/s and tiles per CPU-second of each. Ours (one persistent
    loader per sampler ``area`` in ``areas``) and the decode limit are measured in alternation (same
    load), the others after (unless ``peers`` is False). Also source-tile decodes per row for each area."""
    from wsi_lab.data.export_jpeg import export_jpeg

    limit = f"raw JPEG decode limit {tile}² ({workers} processes, same source tiles)"

    def ours_of(area: int) -> str:
        return (f"TileDataset batched {tile}², uint8, locality shuffle, {workers} persistent workers"
                + ("" if area == AREA else f", area {area}"))

    ours = ours_of(AREA)
    fresh = f"TileDataset batched {tile}², uint8, locality shuffle, {workers} fresh workers each epoch"
    slide_of = {sid: v["path"] for sid, v in table.attrs["wsi_lab"]["slides"].items()}
    per_row = [slide_of[s] for s in table["slide_id"]]
    fast_u8 = TileDataset(table, dtype="uint8")
    dl = DecodeLimit(table, workers)
    print(f"  {tile}²: {len(table)} rows over {dl.tiles} source tiles ({dl.tiles / len(table):.2f} per row)",
          file=sys.stderr)
    for area in areas:
        per = statistics.median(decodes_per_row(fast_u8, workers, e, area=area) for e in range(epochs))
        add(f"source-tile decodes per row {tile}², area {area} ({dl.tiles / len(table):.3f} at the limit)", per,
            "decodes/row", "")
    paired: dict[str, list] = {ours_of(a): [] for a in areas} | {fresh: [], limit: []}
    persistent = {a: PersistentEpochs(fast_u8, workers, area=a) for a in areas}
    for epoch in range(epochs):
        for a, loader in persistent.items():
            paired[ours_of(a)].append(loader.epoch(epoch))
        if AREA in areas:
            paired[fresh].append(loader_epoch(fast_u8, workers, epoch, fast=True))
        paired[limit].append(dl.run())
    for loader in persistent.values():
        loader.close()
    dl.close()
    mine = [(ours_of(a), paired[ours_of(a)], limit) for a in areas]
    if AREA in areas:
        mine.append((fresh, paired[fresh], limit))

    def each(ds, fast: bool = False):
        return lambda: rates([loader_epoch(ds, workers, e, fast=fast) for e in range(epochs)])

    if not peers or AREA not in areas:
        for case, runs, vs in (*mine, (limit, paired[limit], "")):
            rate, cpu_rate = rates(runs)
            add(case, rate, "tiles/s", vs)
            add(case + " ", cpu_rate, "tiles/CPU-s", (vs + " ") if vs else "")
        return
    jpeg_dir = tmp / f"jpeg{tile}"
    export_jpeg(table, jpeg_dir, workers=2)
    files = sorted(jpeg_dir.rglob("*.jpg"))
    cases = [
        *((case, lambda runs=runs: rates(runs), vs) for case, runs, vs in mine),
        (f"TileDataset batched {tile}², float32", each(TileDataset(table), fast=True), ours),
        (f"TileDataset per item {tile}² (before)", each(PerItem(TileDataset(table))), ours),
        (f"plain openslide Dataset {tile}²", each(OpenSlideDataset(per_row, table[["x", "y"]].to_numpy(), tile)), ours),
        (f"materialised JPEG tiles {tile}²", each(JpegFolderDataset(files)), ours),
        (limit, lambda: rates(paired[limit]), ""),
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
    ap.add_argument("--epochs", type=int, default=0, help="loader epochs per case (default 2 with --quick, else 3)")
    ap.add_argument("--sizes", default="64,224", help="loader tile sizes to run (comma-separated: 64, 224)")
    ap.add_argument("--areas", default=str(AREA),
                    help=f"locality-sampler areas (groups) to run the persistent loader with, e.g. 1,{AREA} "
                         f"(1: groups shuffled freely, the loader before areas; default {AREA})")
    ap.add_argument("--no-peers", action="store_true",
                    help="loader rows: only the batched loader and the decode limit (no other loaders)")
    args = ap.parse_args()
    if not CMU.exists():
        sys.exit(f"{CMU} not found (set WSI_LAB_SHARED_SLIDES)")
    torch.set_num_threads(2)
    load0 = os.getloadavg()
    rows: list[tuple[str, float, str, str]] = []
    epochs = args.epochs if args.epochs > 0 else (2 if args.quick else 3)

    def add(case: str, value: float, unit: str, vs: str = "") -> None:
        rows.append((case, value, unit, vs))
        print(f"  {case}: {value:,.3f} {unit}", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="wsi-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        # 224² tiles: 4x (quick) or 8x the copies, so that an epoch (117 tiles per copy) is long enough
        # for the per-epoch cost of starting workers not to dominate
        copies = slide_copies(tmp, max(args.copies, 1) * (4 if args.quick else 8))
        sizes = [int(v) for v in args.sizes.split(",") if v.strip()]
        if bad := [v for v in sizes if v not in (64, 224)]:
            sys.exit(f"--sizes: only 64 and 224, got {bad}")
        for tile in () if args.no_loaders else sizes:
            paths = copies[: args.copies] if tile == 64 else copies
            loader_rows(add, tile, grid_table(tile, paths), tmp, args.workers, epochs, peers=not args.no_peers,
                        areas=tuple(int(v) for v in args.areas.split(",") if v.strip()))
        if not args.no_torchrun:
            runs = torchrun_rates(tmp, args.quick)
            for name, rate in runs:
                add(name, rate, "tiles/s", "" if name == runs[1][0] else runs[1][0])

    if not args.no_models:
        model_rows(add, 3 if args.quick else 10)
    print_table(rows)
    load1 = os.getloadavg()
    print(f"\nload average (1, 5, 15 min): start {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, "
          f"end {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}; {os.cpu_count()} CPUs")


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
        shown = f"{value:>10.3f}" if value < 10 else f"{value:>10,.1f}"
        print(f"{case:<{width}} {shown}  {unit:<8} {ratio:>6}  {vs}")


if __name__ == "__main__":
    main()
