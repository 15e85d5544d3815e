"""Metrics of a classifier's predictions at tile and slide level (scikit-learn): accuracy, balanced
accuracy, per-class recall/precision, ROC AUC one-vs-rest, the row-normalised confusion matrix; and
``evaluate``, which writes ``metrics.json`` and the PNG plots."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wsi_lab.errors import DataError
from wsi_lab.infer.scores import aggregate, class_names, prob_columns

__all__ = ["classification_metrics", "evaluate", "reconstruction_gallery"]


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def classification_metrics(labels: Any, probs: np.ndarray, classes: list[str], source: str = "predictions"
                           ) -> dict[str, Any]:
    """Metrics of ``probs`` (N, C) against class-name ``labels`` (N). Rows without a label are dropped.
    Raises :class:`DataError` when the labels hold fewer than two classes or names outside ``classes``.
    ``auc`` is the macro one-vs-rest AUC (the positive class's AUC for two classes); ``confusion_matrix``
    is row-normalised (``confusion_counts`` holds the counts)."""
    from sklearn import metrics as skm

    from wsi_lab.data.tile_reader import label_key

    lab = pd.Series(labels).map(lambda v: None if pd.isna(v) else label_key(v))
    keep = lab.notna().to_numpy()
    y_names, p = lab[keep].astype(str).to_numpy(), np.asarray(probs, np.float64)[keep]
    unknown = sorted(set(y_names) - set(classes))
    if unknown:
        raise DataError(f"{source}: label value(s) {unknown[:10]} are not among the model's classes {classes}")
    present = sorted(set(y_names))
    if len(present) < 2:
        raise DataError(f"{source}: metrics need labels of at least two classes; found only {present} "
                        f"in {len(y_names)} labelled row(s)")
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[c] for c in y_names])
    pred = p.argmax(1)
    ks = list(range(len(classes)))
    counts = skm.confusion_matrix(y, pred, labels=ks)
    rows = counts.sum(1, keepdims=True)
    recall = skm.recall_score(y, pred, labels=ks, average=None, zero_division=0)
    precision = skm.precision_score(y, pred, labels=ks, average=None, zero_division=0)
    per_auc: dict[str, float | None] = {}
    for i, c in enumerate(classes):
        pos = y == i
        per_auc[c] = float(skm.roc_auc_score(pos, p[:, i])) if 0 < pos.sum() < len(y) else None
    if len(classes) == 2:
        auc = per_auc[classes[1]]
    else:
        vals = [v for v in per_auc.values() if v is not None]
        auc = float(np.mean(vals)) if vals else None
    return {
        "n": int(len(y)), "classes": list(classes),
        "accuracy": float(skm.accuracy_score(y, pred)),
        "balanced_accuracy": float(np.mean([recall[i] for i in sorted(set(y.tolist()))])),
        "auc": _clean(auc),
        "per_class": {c: {"recall": float(recall[i]), "precision": float(precision[i]), "auc": per_auc[c],
                          "support": int(rows[i, 0])} for i, c in enumerate(classes)},
        "confusion_matrix": (counts / np.where(rows > 0, rows, 1)).round(6).tolist(),
        "confusion_counts": counts.tolist(),
    }


def _roc_curves(labels: Any, probs: np.ndarray, classes: list[str]) -> dict[str, tuple]:
    from sklearn.metrics import roc_curve

    from wsi_lab.data.tile_reader import label_key

    lab = pd.Series(labels).map(lambda v: None if pd.isna(v) else label_key(v))
    keep = lab.notna().to_numpy()
    y, p = lab[keep].astype(str).to_numpy(), np.asarray(probs)[keep]
    curves = {}
    for i, c in enumerate(classes):
        pos = y == c
        if 0 < pos.sum() < len(y):
            fpr, tpr, _ = roc_curve(pos, p[:, i])
            from sklearn.metrics import auc as area

            curves[c] = (fpr, tpr, float(area(fpr, tpr)))
    return curves


def reconstruction_gallery(vae_or_checkpoint: Any, table: pd.DataFrame, path: str | os.PathLike, n: int = 8,
                           seed: int = 0) -> Path:
    """PNG of ``n`` tiles of ``table`` (a seeded draw, read from the slides) above the VAE's
    reconstructions of them (from the posterior mean)."""
    import torch

    from wsi_lab.data.dataset import TileDataset
    from wsi_lab.infer._engine import load_model
    from wsi_lab.infer.plots import gallery_png

    lm = load_model(vae_or_checkpoint)
    if lm.kind != "vae":
        raise DataError(f"{lm.source}: a reconstruction gallery needs a VAE, this is a {lm.kind}")
    if len(table) == 0:
        raise DataError("reconstruction gallery: the table is empty")
    rng = np.random.default_rng(seed)
    rows = table.iloc[np.sort(rng.choice(len(table), size=min(n, len(table)), replace=False))]
    ds = TileDataset(rows, label_column="__none__")
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    ds.close()
    with torch.no_grad():
        vae: Any = lm.model
        recon = vae.decode(vae.encode(x))
    to8 = lambda t: (t.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # noqa: E731
    return gallery_png(to8(x), to8(recon), path)


def _vae_summary(table: pd.DataFrame, checkpoint: Any, folder: Path, plots: bool) -> dict[str, Any]:
    err = table["recon_error"].to_numpy(np.float64) if "recon_error" in table.columns else np.array([])
    summary: dict[str, Any] = {"tiles": int(len(table))}
    if len(err):
        summary["recon_error"] = {"mean": float(err.mean()), "median": float(np.median(err)),
                                  "p95": float(np.percentile(err, 95))}
    if plots and checkpoint is not None:
        reconstruction_gallery(checkpoint, table, folder / "reconstructions.png")
        summary["gallery"] = "reconstructions.png"
    return summary


def evaluate(predictions: pd.DataFrame | str | os.PathLike, out: str | os.PathLike, label_column: str = "label",
             how: str = "mean", plots: bool = True, checkpoint: Any = None) -> dict[str, Any]:
    """Write ``out/metrics.json`` (keys ``tile`` and ``slide``, each with ``accuracy``,
    ``balanced_accuracy``, ``auc``, ``confusion_matrix``, ``classes``, per-class recall/precision) and,
    with ``plots``, ``confusion_tile.png``, ``confusion_slide.png``, ``roc_tile.png``, ``roc_slide.png``.
    Slide scores aggregate tiles with ``how``. A VAE's predictions (``z_..`` columns, no ``prob_``)
    give ``{"vae": {"recon_error": ...}}`` instead, and with its ``checkpoint`` a reconstruction gallery
    ``reconstructions.png`` (inputs above reconstructions). Returns the metrics dict."""
    from wsi_lab.infer.run import read_predictions
    from wsi_lab.io import atomic_write_bytes

    source = str(predictions) if not isinstance(predictions, pd.DataFrame) else "predictions"
    table = read_predictions(predictions) if not isinstance(predictions, pd.DataFrame) else predictions
    folder = Path(out)
    if not prob_columns(table) and any(str(c).startswith("z_") for c in table.columns):
        folder.mkdir(parents=True, exist_ok=True)
        result_vae = {"vae": _vae_summary(table, checkpoint, folder, plots)}
        atomic_write_bytes(folder / "metrics.json", json.dumps(result_vae, indent=1).encode())
        return result_vae
    if not prob_columns(table):
        raise DataError(f"{source}: no prob_<class> columns; evaluate needs a classifier's predictions")
    if label_column not in table.columns:
        raise DataError(f"{source}: no {label_column!r} column to evaluate against; attach labels first")
    classes = class_names(table)
    probs = table[prob_columns(table)].to_numpy(np.float64)
    result: dict[str, Any] = {"tile": classification_metrics(table[label_column], probs, classes, f"{source} (tiles)")}
    slides = aggregate(table, how=how, by="slide", label_column=label_column)
    sp = slides[prob_columns(slides)].to_numpy(np.float64)
    try:
        result["slide"] = classification_metrics(slides["label"], sp, classes, f"{source} (slides)")
    except DataError as exc:  # e.g. one slide per class is missing: keep the tile metrics, say why
        result["slide"] = {"error": str(exc), "classes": classes, "accuracy": None, "balanced_accuracy": None,
                           "auc": None, "confusion_matrix": None}
    result["slide"]["aggregate"] = how
    result["predict"] = {k: v for k, v in ((table.attrs.get("wsi_lab") or {}).get("predict") or {}).items()
                         if k in ("checkpoint", "checkpoint_hash", "kind", "classes")}
    folder.mkdir(parents=True, exist_ok=True)
    if plots:
        from wsi_lab.infer.plots import confusion_png, roc_png

        for level, labels, p in (("tile", table[label_column], probs), ("slide", slides["label"], sp)):
            m = result[level]
            if m.get("confusion_counts") is not None:
                confusion_png(np.array(m["confusion_counts"]), classes, folder / f"confusion_{level}.png",
                              f"{level} level: rows true, columns predicted (n={m['n']})")
                roc_png(_roc_curves(labels, p, classes),
                        folder / f"roc_{level}.png", f"{level} level ROC (one-vs-rest)")
    atomic_write_bytes(folder / "metrics.json", json.dumps(result, indent=1, allow_nan=False).encode())
    return result
