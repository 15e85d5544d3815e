"""PNG plots of evaluation results drawn with Pillow (no matplotlib needed): a confusion matrix with
counts and row-normalised colours, ROC curves with their AUC, and a VAE reconstruction gallery."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from wsi_lab.io import save_image
from wsi_lab.overlays import category_colors, colormap_lut

__all__ = ["confusion_png", "roc_png", "gallery_png"]


def _font(size: int = 13):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def confusion_png(counts: np.ndarray, classes: Sequence[str], path: str | os.PathLike, title: str = "") -> Path:
    """Confusion matrix: rows true, columns predicted; cell colour = row-normalised share, text = count
    and share."""
    counts = np.asarray(counts, np.int64)
    k = len(classes)
    cell, left, top = 72, 110, 60
    img = Image.new("RGB", (max(420, left + k * cell + 20), top + k * cell + 50), "white")
    d = ImageDraw.Draw(img)
    f = _font(13)
    lut = colormap_lut("viridis")
    rows = counts.sum(1, keepdims=True)
    share = counts / np.where(rows > 0, rows, 1)
    d.text((left, 8), title or "confusion matrix (rows: true, columns: predicted)", fill="black", font=f)
    for j, c in enumerate(classes):
        d.text((left + j * cell + 6, top - 20), str(c)[:9], fill="black", font=f)
        d.text((8, top + j * cell + cell // 2 - 7), str(c)[:13], fill="black", font=f)
    for i in range(k):
        for j in range(k):
            rgb = tuple(int(v) for v in lut[int(round(share[i, j] * 255))])
            x0, y0 = left + j * cell, top + i * cell
            d.rectangle((x0, y0, x0 + cell - 2, y0 + cell - 2), fill=rgb)
            ink = "black" if sum(rgb) > 380 else "white"
            d.text((x0 + 8, y0 + 18), f"{counts[i, j]}", fill=ink, font=f)
            d.text((x0 + 8, y0 + 38), f"{share[i, j]:.2f}", fill=ink, font=f)
    d.text((left, top + k * cell + 12), "columns: predicted class", fill="black", font=f)
    save_image(np.asarray(img), path)
    return Path(path)


def roc_png(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], path: str | os.PathLike, title: str = "") -> Path:
    """ROC curves ``{class: (fpr, tpr, auc)}`` on one plot, with the chance diagonal and a legend."""
    size, pad = 360, 50
    img = Image.new("RGB", (size + 2 * pad + 170, size + 2 * pad), "white")
    d = ImageDraw.Draw(img)
    f = _font(13)

    def xy(fx: float, fy: float) -> tuple[float, float]:
        return pad + fx * size, pad + (1 - fy) * size

    d.rectangle((pad, pad, pad + size, pad + size), outline="black")
    d.line([xy(0, 0), xy(1, 1)], fill=(170, 170, 170), width=1)
    for t in (0.0, 0.5, 1.0):
        d.text((xy(t, 0)[0] - 8, pad + size + 6), f"{t:g}", fill="black", font=f)
        d.text((pad - 26, xy(0, t)[1] - 7), f"{t:g}", fill="black", font=f)
    d.text((pad + size / 2 - 60, pad + size + 26), "false positive rate", fill="black", font=f)
    d.text((pad, 12), title or "ROC (one-vs-rest)", fill="black", font=f)
    colors = category_colors(max(1, len(curves)))
    for n, (name, (fpr, tpr, auc)) in enumerate(curves.items()):
        pts = [xy(float(a), float(b)) for a, b in zip(fpr, tpr)]
        if len(pts) > 1:
            d.line(pts, fill=colors[n], width=2)
        ly = pad + 10 + n * 20
        d.rectangle((pad + size + 14, ly, pad + size + 28, ly + 12), fill=colors[n])
        d.text((pad + size + 34, ly - 1), f"{str(name)[:12]} AUC {auc:.3f}", fill="black", font=f)
    save_image(np.asarray(img), path)
    return Path(path)


def gallery_png(inputs: np.ndarray, recons: np.ndarray, path: str | os.PathLike) -> Path:
    """Inputs (top row) above their reconstructions (bottom row); arrays ``(N, H, W, 3) uint8``."""
    n, h, w = inputs.shape[:3]
    gap = 4
    canvas = np.full((2 * h + 3 * gap, n * (w + gap) + gap, 3), 255, np.uint8)
    for i in range(n):
        x = gap + i * (w + gap)
        canvas[gap:gap + h, x:x + w] = inputs[i]
        canvas[2 * gap + h:2 * gap + 2 * h, x:x + w] = recons[i]
    save_image(canvas, path)
    return Path(path)
