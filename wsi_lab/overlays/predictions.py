"""Overlays of saved predictions, latents and features (no slide is read or re-tiled): a class
probability heatmap, the ``pred`` category map in the model's class order, latents to colours by
PCA (first three components; UMAP when installed), a k-means cluster map, MIL attention; and
:func:`render_png`, the layer over the slide's extent with its legend drawn in."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsi_lab.errors import InvalidParameterError
from wsi_lab.overlays._build import category_layer, heatmap_layer, latent_rgb_layer
from wsi_lab.overlays._colors import Color, colormap_lut
from wsi_lab.overlays._layers import TileLayer

__all__ = ["PREDICTION_KINDS", "probability_layer", "prediction_layer", "latent_layer", "cluster_layer",
           "attention_layer", "layer_for", "latent_columns_of", "project_latents", "kmeans", "render_png"]

PREDICTION_KINDS = ("heatmap", "pred", "latent", "clusters", "attention")


def _classes(table) -> list[str]:
    meta = (table.attrs.get("wsi_lab") or {}).get("predict") or {}
    return [str(c) for c in meta.get("classes") or []] or [c[5:] for c in table.columns if str(c).startswith("prob_")]


def probability_layer(table, class_name: str | None = None, cmap: str = "magma", opacity: float = 0.6) -> TileLayer:
    """Heatmap of ``prob_<class_name>`` on a fixed 0–1 scale (the colour bar reads as a probability);
    default class: the model's last (the positive class of a binary model)."""
    classes = _classes(table)
    if class_name is None:
        if not classes:
            raise InvalidParameterError(f"no prob_<class> column to draw; columns are {list(table.columns)}")
        class_name = classes[-1]
    column = f"prob_{class_name}"
    if column not in table.columns:
        raise InvalidParameterError(f"no column {column!r}: the classes are {classes}; choose one of them")
    return heatmap_layer(table, column, cmap=cmap, vmin=0.0, vmax=1.0, opacity=opacity, name=column)


def prediction_layer(table, column: str = "pred", colors: Mapping[Any, Color] | Sequence[Color] | None = None,
                     opacity: float = 0.6) -> TileLayer:
    """Category map of ``column`` (default ``pred``) with the model's class names in its class order, so
    a class keeps its colour across slides even where it is absent."""
    import pandas as pd

    if column not in table.columns:
        raise InvalidParameterError(f"tile table has no column {column!r}; columns are {list(table.columns)}")
    classes = _classes(table)
    values = table[column].astype(str).where(table[column].notna())
    extra = sorted(set(values.dropna()) - set(classes))
    frame = pd.DataFrame({"x": table["x"], "y": table["y"], column: pd.Categorical(values, categories=classes + extra)})
    for c in ("level", "read_size", "size0", "tile_size"):
        if c in table.columns:
            frame[c] = table[c].to_numpy()
    frame.attrs = table.attrs
    return category_layer(frame, column, colors=colors, opacity=opacity, name=column)


def latent_columns_of(table, prefix: str = "z_") -> list[str]:
    """The latent (``z_..``) or feature columns of a table, in order."""
    cols = [c for c in table.columns if str(c).startswith(prefix) and str(c)[len(prefix):].isdigit()]
    if not cols:
        raise InvalidParameterError(f"no {prefix}NN columns in the table (a VAE's latents); columns are "
                                    f"{list(table.columns)}")
    return sorted(cols, key=lambda c: int(str(c)[len(prefix):]))


def project_latents(x: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """(N, 3) projection of (N, D) latents: the first three principal components, or UMAP (``umap``,
    when ``umap-learn`` is installed). Fewer than three dimensions are padded with zeros."""
    x = np.asarray(x, np.float64)
    if method == "umap":
        try:
            import umap
        except ImportError as exc:
            from wsi_lab.errors import MissingDependencyError

            raise MissingDependencyError("umap", "umap-learn", "UMAP latent colours (use method='pca')") from exc
        return np.asarray(umap.UMAP(n_components=3, random_state=seed).fit_transform(x))
    if method != "pca":
        raise InvalidParameterError(f"method must be 'pca' or 'umap', got {method!r}")
    centred = x - x.mean(0)
    if len(x) < 2:
        return np.zeros((len(x), 3))
    evals, evecs = np.linalg.eigh(centred.T @ centred)  # D x D: cheap for 200k tiles
    comps = centred @ evecs[:, ::-1][:, :3]
    comps *= np.where(comps.sum(0) < 0, -1.0, 1.0)  # a sign convention: stable colours between runs
    return np.pad(comps, ((0, 0), (0, 3 - comps.shape[1])))


def latent_layer(table, columns: Sequence[str] | None = None, method: str = "pca", opacity: float = 0.8,
                 seed: int = 0) -> TileLayer:
    """Tiles coloured by their latents projected to three components (R, G, B)."""
    cols = list(columns) if columns else latent_columns_of(table)
    missing = [c for c in cols if c not in table.columns]
    if missing:
        raise InvalidParameterError(f"tile table has no column(s) {missing}")
    comps = project_latents(table[cols].to_numpy(np.float64), method, seed)
    frame = table[[c for c in ("x", "y", "level", "read_size", "size0") if c in table.columns]].copy()
    names = [f"{method}_{i + 1}" for i in range(3)]
    for i, n in enumerate(names):
        frame[n] = comps[:, i]
    frame.attrs = table.attrs
    layer = latent_rgb_layer(frame, names, opacity=opacity, name=f"latent ({method})")
    layer._legend = {**layer.legend(), "method": method, "source_columns": cols}
    return layer


def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 50) -> np.ndarray:
    """Cluster labels (N,) of Lloyd's k-means with k-means++ seeding (deterministic for ``seed``)."""
    x = np.asarray(x, np.float64)
    if not 1 <= k <= len(x):
        raise InvalidParameterError(f"k must be between 1 and the number of tiles ({len(x)}), got {k}")
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d2 = np.clip(np.min([((x - c) ** 2).sum(1) for c in centres], axis=0), 0, None)
        centres.append(x[rng.choice(len(x), p=d2 / d2.sum())] if d2.sum() > 0 else x[rng.integers(len(x))])
    c = np.array(centres)
    labels = np.zeros(len(x), np.int64)
    sq = (x ** 2).sum(1)
    for _ in range(iters):
        new = (sq[:, None] - 2 * x @ c.T + (c ** 2).sum(1)[None]).argmin(1)
        if (new == labels).all() and _ > 0:
            break
        labels = new
        for j in range(k):
            if (labels == j).any():
                c[j] = x[labels == j].mean(0)
    return labels


def cluster_layer(table, k: int = 6, columns: Sequence[str] | None = None, seed: int = 0,
                  opacity: float = 0.6) -> TileLayer:
    """Category map of k-means clusters of the latent (or feature) columns."""
    cols = list(columns) if columns else latent_columns_of(table)
    labels = kmeans(table[cols].to_numpy(np.float64), k, seed)
    frame = table[[c for c in ("x", "y", "level", "read_size", "size0") if c in table.columns]].copy()
    frame["cluster"] = labels
    frame.attrs = table.attrs
    return category_layer(frame, "cluster", opacity=opacity, name=f"clusters (k={k})")


def attention_layer(table, column: str = "attention", cmap: str = "viridis", opacity: float = 0.6) -> TileLayer:
    """Heatmap of MIL attention (scaled to each table's range)."""
    if column not in table.columns:
        raise InvalidParameterError(f"tile table has no column {column!r} (an attention-MIL model's output); "
                                    f"columns are {list(table.columns)}")
    return heatmap_layer(table, column, cmap=cmap, opacity=opacity, name=column)


def layer_for(table, kind: str, class_name: str | None = None, k: int = 6, method: str = "pca") -> TileLayer:
    """The layer of one of :data:`PREDICTION_KINDS` for a predictions table."""
    if kind == "heatmap":
        return probability_layer(table, class_name)
    if kind == "pred":
        return prediction_layer(table)
    if kind == "latent":
        return latent_layer(table, method=method)
    if kind == "clusters":
        return cluster_layer(table, k)
    if kind == "attention":
        return attention_layer(table)
    raise InvalidParameterError(f"overlay kind must be one of {PREDICTION_KINDS}, got {kind!r}")


def _extent(table, slide_id: str | None) -> tuple[float, float]:
    meta = table.attrs.get("wsi_lab") or {}
    dims = None
    if slide_id is not None:
        dims = ((meta.get("slides") or {}).get(slide_id) or {}).get("dimensions")
    dims = dims or meta.get("slide_dimensions")
    if dims:
        return float(dims[0]), float(dims[1])
    from wsi_lab.overlays._raster import tile_extent

    size = tile_extent(table)
    return float((table["x"] + size).max()), float((table["y"] + size).max())


def _legend_panel(legend: dict, height: int, width: int = 200) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    panel = Image.new("RGB", (width, max(height, 120)), "white")
    d = ImageDraw.Draw(panel)
    f = ImageFont.load_default()
    kind = legend.get("type")
    if kind == "continuous":
        lut = colormap_lut(legend.get("cmap", "viridis"))
        top, bottom = 30, max(height, 120) - 30
        for yy in range(top, bottom):
            t = 1 - (yy - top) / max(1, bottom - top - 1)
            d.line([(20, yy), (44, yy)], fill=tuple(int(v) for v in lut[int(round(t * 255))]))
        d.text((10, 8), str(legend.get("column", ""))[:28], fill="black", font=f)
        d.text((52, top - 6), f"{legend.get('vmax', 0):.3g}", fill="black", font=f)
        d.text((52, bottom - 8), f"{legend.get('vmin', 0):.3g}", fill="black", font=f)
    elif kind == "categorical":
        d.text((10, 8), str(legend.get("column", ""))[:28], fill="black", font=f)
        for i, cat in enumerate(legend.get("categories", [])):
            y0 = 30 + 20 * i
            d.rectangle((10, y0, 26, y0 + 14), fill=cat["color"], outline="black")
            d.text((34, y0 + 1), str(cat["value"])[:24], fill="black", font=f)
    elif kind == "rgb":
        d.text((10, 8), f"latents: {legend.get('method', 'pca')}", fill="black", font=f)
        for i, (ch, name) in enumerate(zip(("red", "green", "blue"), legend.get("columns", []))):
            d.rectangle((10, 30 + 20 * i, 26, 44 + 20 * i), fill=ch)
            d.text((34, 31 + 20 * i), str(name), fill="black", font=f)
    return np.asarray(panel)


def render_png(table, layer: TileLayer, path: str | os.PathLike, max_size: int = 1024, slide_id: str | None = None,
               legend: bool = True) -> Path:
    """Write ``layer`` over the slide's level-0 extent (from the table's metadata, else the tiles'),
    longest side ``max_size``, on white, with the legend drawn to its right. Reads no slide pixels."""
    from wsi_lab.io import save_image

    if slide_id is None and "slide_id" in table.columns and len(table):
        slide_id = str(table["slide_id"].iloc[0])
    W, H = _extent(table, slide_id)
    scale = max(W / max_size, H / max_size, 1e-9)
    ow, oh = max(1, round(W / scale)), max(1, round(H / scale))
    rgba = layer.render_region((0, 0, W, H), (ow, oh)).astype(np.float32)
    alpha = rgba[..., 3:] / 255.0
    img = (rgba[..., :3] * alpha + 255.0 * (1 - alpha)).round().astype(np.uint8)
    if legend:
        panel = _legend_panel(layer.legend(), oh)
        canvas = np.full((max(oh, panel.shape[0]), ow + panel.shape[1], 3), 255, np.uint8)
        canvas[:oh, :ow] = img
        canvas[:panel.shape[0], ow:] = panel
        img = canvas
    save_image(img, path)
    return Path(path)
