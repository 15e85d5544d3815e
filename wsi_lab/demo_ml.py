"""The demo's model steps, after tiling: a small VAE trained through :class:`~wsi_lab.train.JobSpec` +
:func:`wsi_lab.train.launch` (backend local, as a user would), latents for every tile
(:func:`wsi_lab.infer.predict`), a PCA latent-colour overlay and a k-means cluster overlay per slide
(with legends), a QuPath GeoJSON per slide and, with two or more slides, a ``small_cnn`` classifier of
"which slide is this tile from" (per-slide classes; tiles split at random within each slide) evaluated
with :func:`wsi_lab.infer.evaluate`. Every step is skipped when its outputs are complete.

Layout under ``out``: ``train/tiles64/`` (64² tiles at :data:`TRAIN_MPP` µm/px), ``train/vae/``,
``train/classify/``, ``predict/``, ``overlays/<slide>_latent.png``, ``overlays/<slide>_clusters.png``,
``geojson/<slide>.geojson``, ``eval/classify/``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsi_lab.errors import WSILabError

TRAIN_TILE = 64
TRAIN_MPP = 1.0          # 64 px at 1 µm/px: a quarter of the footprint of the 256² tiles at 0.5 µm/px
INSTALL_HINT = "install them with `pip install 'wsi-lab[train]'` or `bash scripts/setup.sh`"
MANIFEST_KIND = "demo-train"
MIN_CLASS_TILES = 10     # a slide joins the classifier's classes with at least this many tiles


@dataclass
class MLSettings:
    """Sizes of the demo's model steps (the defaults run in about a minute on 2 CPU cores)."""

    epochs: int = 3
    batch_size: int = 32
    latent_dim: int = 16
    clusters: int = 4
    classifier: bool = True
    max_tiles_per_slide: int | None = 200


def missing_training_deps() -> list[str]:
    """The training packages (torch, torchvision) that are not installed."""
    return [m for m in ("torch", "torchvision") if importlib.util.find_spec(m) is None]


def _files_hash(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def train_if_needed(spec, inputs: str, say: Callable[[str], None], progress=None) -> tuple[Path, bool]:
    """Run ``spec`` with :func:`wsi_lab.train.launch` unless ``spec.out`` holds a complete run of this
    spec (its manifest: same spec hash, same ``inputs`` hash, checkpoint present), saying which through
    ``say``; ``(checkpoint, ran)``."""
    from wsi_lab.runs.manifest import check_manifest, write_manifest
    from wsi_lab.train import launch

    out = Path(spec.out)
    ckpt = out / "checkpoints" / "last.pt"
    if check_manifest(out, MANIFEST_KIND, inputs_hash=inputs, params_hash=spec.hash(), verify_hashes=False):
        say(f"  skipped: {ckpt} is complete for this spec ({spec.hash(12)})")
        return ckpt, False
    _clear_stale(out, spec, inputs, say)
    job = launch(spec, progress=progress)
    job.result()  # raises the worker's typed error
    write_manifest(out, MANIFEST_KIND, inputs_hash=inputs, params_hash=spec.hash(),
                   files=[str(ckpt.relative_to(out))], hash_limit=0, task=spec.task)
    say(f"  checkpoint {ckpt}")
    return ckpt, True


def _clear_stale(out: Path, spec, inputs: str, say: Callable[[str], None]) -> None:
    """Empty the demo's own training folder when it holds a run of other tiles or another model (the
    demo's settings changed): a user's job refuses such a folder, the demo starts that model afresh."""
    import shutil

    from wsi_lab.runs.manifest import read_manifest
    from wsi_lab.train import JobSpec

    old_spec = out / "spec.json"
    if not old_spec.is_file():
        return
    manifest = read_manifest(out)
    stale = manifest is not None and manifest.get("inputs_hash") != inputs
    try:
        stale = stale or JobSpec.read(old_spec).identity() != spec.identity()
    except WSILabError:
        stale = True
    if stale:
        say(f"  {out} holds a run of other tiles or another model: training it afresh")
        shutil.rmtree(out)


def _subsample(table, n: int | None, seed: int = 0):
    if n is None:
        return table
    parts = [g if len(g) <= n else g.sample(n, random_state=seed) for _, g in table.groupby("slide_id", sort=False)]
    import pandas as pd

    return pd.concat(parts).sort_index()


def run_model_steps(report, tables: dict[str, Path], paths: list[str], settings: MLSettings,
                    say: Callable[[str], None], progress_factory: Callable[[], Any] | None = None,
                    client: Any = None, workers: int | None = None) -> None:
    """The model steps of :func:`wsi_lab.demo.run_demo` (see the module docstring); fills ``report``."""
    import time

    from wsi_lab.data.table import load_tables, write_table
    from wsi_lab.infer import predict_slides, write_geojson, write_predictions
    from wsi_lab.overlays.predictions import cluster_layer, latent_layer, render_png
    from wsi_lab.tiling import TilingParams, run_tiling
    from wsi_lab.train import JobSpec

    out = report.out
    prog = progress_factory or (lambda: None)
    missing = missing_training_deps()
    if missing:
        report.skipped.append(f"training, prediction and model overlays skipped: {', '.join(missing)} not "
                              f"installed; {INSTALL_HINT}")
        say(report.skipped[-1])
        return

    t0 = time.perf_counter()
    say(f"[train tiles] {TRAIN_TILE}² tiles at {TRAIN_MPP} µm/px for the models -> {out / 'train' / 'tiles64'}")
    res = run_tiling(paths, TilingParams(tile_size=TRAIN_TILE, mpp=TRAIN_MPP), client=client,
                     out=out / "train" / "tiles64", n_workers=workers, progress=prog(), if_no_mpp="level0")
    report.failed.update({f"{k} (train tiles)": v for k, v in res.failed.items()})
    train_tables = {sid: Path(p) for sid, p in res.tables.items()}
    table = load_tables(list(train_tables.values())) if train_tables else None
    if table is None or table.empty:
        report.skipped.append("no tissue tiles for the models: training skipped")
        say(report.skipped[-1])
        return
    inputs = _files_hash(list(train_tables.values())) + f"|{settings.max_tiles_per_slide}"
    table = _subsample(table, settings.max_tiles_per_slide)
    train_table = write_table(table, out / "train" / "vae_tiles.parquet")
    report.timings["train tiles"] = time.perf_counter() - t0

    # -- VAE --------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    vae_spec = JobSpec(task="vae", table=str(train_table), out=str(out / "train" / "vae"),
                       model={"name": "vae", "latent_dim": settings.latent_dim}, epochs=settings.epochs,
                       batch_size=settings.batch_size, backend="local", device="cpu").validate()
    say(f"[train vae] {len(table)} tiles, {settings.epochs} epoch(s), latent_dim {settings.latent_dim} "
        f"(JobSpec + wsi_lab.launch, backend local) -> {vae_spec.out}")
    ckpt, _ran = train_if_needed(vae_spec, inputs, say, prog())
    report.checkpoints["vae"] = ckpt
    report.timings["train vae"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    say(f"[predict vae] latents z_* and recon_error for {len(table)} tiles -> {out / 'predict' / 'vae.parquet'}")
    pr = predict_slides(ckpt, table, out=out / "predict" / "vae", device="cpu", batch_size=64, progress=prog())
    report.failed.update({f"{f.item} (predict)": f"{f.error_type}: {f.message}" for f in pr.failures})
    preds = pr.table
    report.predictions["vae"] = write_predictions(preds, out / "predict" / "vae.parquet")
    report.timings["predict vae"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    say(f"[overlays] latent PCA colours, k-means clusters (k={settings.clusters}) and QuPath GeoJSON per slide")
    from wsi_lab.data.tile_reader import slide_paths_of
    from wsi_lab.slide import open_slide

    slide_paths = slide_paths_of(preds)
    for sid, rows in preds.groupby("slide_id", sort=False):
        sid = str(sid)
        rows = rows.copy()
        rows.attrs = preds.attrs
        try:
            if "size0" not in rows.columns:  # level-0 tile size, for tiles read at a level > 0
                with open_slide(slide_paths[sid]) as s:
                    down = np.asarray(s.level_downsamples, np.float64)
                rows["size0"] = rows["read_size"].to_numpy(np.float64) * down[rows["level"].to_numpy(int)]
            p = render_png(rows, latent_layer(rows), out / "overlays" / f"{sid}_latent.png", slide_id=sid)
            report.overlays[f"{sid} latent"] = p
            k = max(1, min(settings.clusters, len(rows)))
            layer = cluster_layer(rows, k=k)
            report.overlays[f"{sid} clusters"] = render_png(rows, layer, out / "overlays" / f"{sid}_clusters.png",
                                                            slide_id=sid)
            from wsi_lab.overlays.predictions import kmeans, latent_columns_of

            rows["cluster"] = [f"cluster {c}" for c in kmeans(rows[latent_columns_of(rows)].to_numpy(np.float64), k)]
            report.geojson[sid] = write_geojson(out / "geojson" / f"{sid}.geojson", rows, column="cluster")
        except WSILabError as exc:
            report.failed[f"{sid} (overlays)"] = str(exc)
    report.timings["overlays"] = time.perf_counter() - t0

    if settings.classifier:
        _classifier(report, table, inputs, settings, say, prog)


def _classifier(report, table, inputs: str, settings: MLSettings, say: Callable[[str], None], prog) -> None:
    """A small_cnn that tells the slides apart (per-slide labels; 80/20 random tile split per slide)."""
    import time

    from wsi_lab.data.table import write_table
    from wsi_lab.infer import evaluate, predict, write_predictions
    from wsi_lab.train import JobSpec

    out = report.out
    counts = table.groupby("slide_id").size()
    slides = sorted(str(s) for s, n in counts.items() if n >= MIN_CLASS_TILES)
    if len(slides) < 2:
        report.skipped.append(f"classifier skipped: it needs two or more slides with {MIN_CLASS_TILES}+ tiles each "
                              "(its labels are the slide each tile comes from)")
        say(report.skipped[-1])
        return
    t0 = time.perf_counter()
    lab = table[table["slide_id"].astype(str).isin(slides)].copy()
    lab["label"] = lab["slide_id"].astype(str)
    rng = np.random.default_rng(0)
    lab["split"] = np.where(rng.random(len(lab)) < 0.8, "train", "val")
    lab.attrs = table.attrs
    path = write_table(lab, out / "train" / "classify_tiles.parquet")
    spec = JobSpec(task="classify", table=str(path), out=str(out / "train" / "classify"),
                   model={"name": "small_cnn"}, epochs=settings.epochs, batch_size=settings.batch_size,
                   backend="local", device="cpu").validate()
    say(f"[train classifier] small_cnn on {len(slides)} slide classes, {len(lab)} tiles -> {spec.out}")
    ckpt, _ran = train_if_needed(spec, inputs, say, prog())
    report.checkpoints["classify"] = ckpt
    report.timings["train classifier"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    val = lab[lab["split"] == "val"]
    say(f"[evaluate classifier] {len(val)} validation tiles -> {out / 'eval' / 'classify'}")
    preds = predict(ckpt, val, out=out / "predict" / "classify", device="cpu", progress=prog())
    report.predictions["classify"] = write_predictions(preds, out / "predict" / "classify.parquet")
    evaluate(preds, out / "eval" / "classify", plots=True)
    report.metrics["classify"] = out / "eval" / "classify" / "metrics.json"
    report.timings["evaluate classifier"] = time.perf_counter() - t0


def read_metrics_line(path: str | os.PathLike) -> str:
    """One line of a classifier's metrics.json (tile accuracy and balanced accuracy)."""
    m = json.loads(Path(path).read_text())
    tile = m.get("tile", {})
    return (f"tile accuracy {tile.get('accuracy', float('nan')):.3f}, balanced "
            f"{tile.get('balanced_accuracy', float('nan')):.3f}")
