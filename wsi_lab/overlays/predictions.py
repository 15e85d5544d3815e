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
           "attention_layer", "layer_for", "latent_columns_of", "project_latents", "kmeans", "KMEANS_FIT_ROWS",
           "render_png", "named_layer", "with_legends"]

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


def project_latents(x: np.ndarray, method: str = "pca", seed: int = 0, n_components: int = 3) -> np.ndarray:
    """(N, n_components) float32 projection of (N, D) latents or features: the first principal
    components, or UMAP (``umap``, when ``umap-learn`` is installed). Fewer dimensions than asked are
    padded with zeros. PCA works on float32 with the D × D covariance (accumulated in float64, so 200k
    tiles × 32 latents take milliseconds); each component's sign is fixed so colours and plots are
    stable between runs. The overlays and the latent explorer both call this."""
    x = np.asarray(x, np.float32)
    if x.ndim != 2:
        raise InvalidParameterError(f"latents must be a 2-D (tiles, dimensions) array, got shape {x.shape}")
    if method == "umap":
        try:
            import umap
        except ImportError as exc:
            from wsi_lab.errors import MissingDependencyError

            raise MissingDependencyError("umap", "umap-learn", "UMAP latent colours (use method='pca')") from exc
        out = np.asarray(umap.UMAP(n_components=n_components, random_state=seed).fit_transform(x), np.float32)
        return out
    if method != "pca":
        raise InvalidParameterError(f"method must be 'pca' or 'umap', got {method!r}")
    n, d = x.shape
    if n < 2 or d == 0:
        return np.zeros((n, n_components), np.float32)
    mean = x.mean(0, dtype=np.float64)
    cov = (x.T @ x).astype(np.float64) / n - np.outer(mean, mean)  # float32 matmul, float64 correction
    _evals, evecs = np.linalg.eigh(cov)
    k = min(n_components, d)
    basis = evecs[:, ::-1][:, :k]
    # a sign convention (the loading of largest magnitude is positive): stable colours between runs
    basis = (basis * np.sign(basis[np.abs(basis).argmax(0), np.arange(k)] + 1e-300)).astype(np.float32)
    comps = x @ basis - (mean @ basis.astype(np.float64)).astype(np.float32)
    return np.pad(comps, ((0, 0), (0, n_components - k)))


def latent_layer(table, columns: Sequence[str] | None = None, method: str = "pca", opacity: float = 0.8,
                 seed: int = 0) -> TileLayer:
    """Tiles coloured by their latents projected to three components (R, G, B)."""
    cols = list(columns) if columns else latent_columns_of(table)
    missing = [c for c in cols if c not in table.columns]
    if missing:
        raise InvalidParameterError(f"tile table has no column(s) {missing}")
    comps = project_latents(table[cols].to_numpy(np.float32), method, seed)
    frame = table[[c for c in ("x", "y", "level", "read_size", "size0") if c in table.columns]].copy()
    names = [f"{method}_{i + 1}" for i in range(3)]
    for i, n in enumerate(names):
        frame[n] = comps[:, i]
    frame.attrs = table.attrs
    layer = latent_rgb_layer(frame, names, opacity=opacity, name=f"latent ({method})")
    layer._legend = {**layer.legend(), "method": method, "source_columns": cols}
    return layer


KMEANS_FIT_ROWS = 10_000  # k-means fits on at most this many tiles (a seeded sample), then assigns all


def _cross(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(N, k) dot products of rows and centres by ``einsum`` (no BLAS: a multi-threaded BLAS call on this
    skinny shape spins its threads against each other on a loaded machine, 10× slower)."""
    return np.einsum("ij,kj->ik", x, centres)


def _lloyd(x: np.ndarray, k: int, rng: np.random.Generator, iters: int) -> tuple[np.ndarray, float]:
    """Centres (k, D) of Lloyd's k-means with k-means++ seeding on float32 ``x``, and their inertia."""
    sq = np.einsum("ij,ij->i", x, x)
    centres = np.empty((k, x.shape[1]), np.float32)
    centres[0] = x[rng.integers(len(x))]
    d2 = np.clip(sq - 2 * _cross(x, centres[:1])[:, 0] + centres[0] @ centres[0], 0, None)
    for j in range(1, k):
        total = float(d2.sum())
        centres[j] = x[rng.choice(len(x), p=d2 / total)] if total > 0 else x[rng.integers(len(x))]
        d2 = np.minimum(d2, np.clip(sq - 2 * _cross(x, centres[j:j + 1])[:, 0] + centres[j] @ centres[j], 0, None))
    labels = np.full(len(x), -1, np.int64)
    for _ in range(iters):
        dist = sq[:, None] - 2 * _cross(x, centres) + np.einsum("ij,ij->i", centres, centres)[None]
        new = dist.argmin(1)
        if np.array_equal(new, labels):
            break
        labels = new
        counts = np.bincount(labels, minlength=k)
        onehot = np.zeros((len(x), k), np.float32)
        onehot[np.arange(len(x)), labels] = 1.0
        sums = np.einsum("ik,ij->kj", onehot, x)  # per-cluster sums (np.add.at is 30× slower)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
    dist = sq[:, None] - 2 * _cross(x, centres) + np.einsum("ij,ij->i", centres, centres)[None]
    return centres, float(np.clip(dist.min(1), 0, None).sum())


def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 50, n_init: int = 2,
           fit_rows: int = KMEANS_FIT_ROWS) -> np.ndarray:
    """Cluster labels (N,) of k-means (Lloyd's, k-means++ seeding, best of ``n_init`` starts) on float32,
    deterministic for ``seed``. Above ``fit_rows`` tiles the centres are fitted on a seeded sample of
    that many and every tile is then assigned to its nearest centre (200k tiles: well under a second).
    Clusters are numbered by size, largest first, so colours stay put between runs."""
    x = np.asarray(x, np.float32)
    if x.ndim != 2:
        raise InvalidParameterError(f"k-means needs a 2-D (tiles, dimensions) array, got shape {x.shape}")
    if not 1 <= k <= len(x):
        raise InvalidParameterError(f"k must be between 1 and the number of tiles ({len(x)}), got {k}")
    rng = np.random.default_rng(seed)
    fit = x if len(x) <= fit_rows else x[np.sort(rng.choice(len(x), fit_rows, replace=False))]
    best: tuple[np.ndarray, float] | None = None
    for _ in range(max(1, n_init)):
        centres, inertia = _lloyd(fit, k, rng, iters)
        if best is None or inertia < best[1]:
            best = (centres, inertia)
    assert best is not None
    centres = best[0]
    labels = np.empty(len(x), np.int64)
    csq = np.einsum("ij,ij->i", centres, centres)
    for start in range(0, len(x), 65536):  # bounded memory for millions of tiles
        part = x[start:start + 65536]
        labels[start:start + len(part)] = (csq[None] - 2 * _cross(part, centres)).argmin(1)
    order = np.argsort(-np.bincount(labels, minlength=k), kind="stable")
    return np.argsort(order)[labels]


def cluster_layer(table, k: int = 6, columns: Sequence[str] | None = None, seed: int = 0,
                  opacity: float = 0.6) -> TileLayer:
    """Category map of k-means clusters of the latent (or feature) columns."""
    cols = list(columns) if columns else latent_columns_of(table)
    labels = kmeans(table[cols].to_numpy(np.float32), k, seed)
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


def named_layer(table, name: str) -> TileLayer | None:
    """The prediction layer a name stands for in viewers, napari and the CLIs, or None when it names
    none: ``heatmap`` / ``heatmap:<class>``, ``pred``, ``pca`` / ``umap`` / ``latent:<method>`` (projected
    latents), ``clusters`` / ``clusters:<k>``, ``attention``. ``pred`` and ``attention`` count only when
    the table has that column."""
    kind, _, arg = name.partition(":")
    if name in ("pred", "attention") and name in table.columns:
        return layer_for(table, name)
    if kind == "heatmap":
        return probability_layer(table, arg or None)
    if kind == "clusters":
        if arg and not arg.isdigit():
            raise InvalidParameterError(f"overlay {name!r}: the cluster count after ':' must be a whole number")
        return cluster_layer(table, int(arg) if arg else 6)
    if kind in ("pca", "umap") and not arg:
        return latent_layer(table, method=kind)
    if kind == "latent" and arg:
        return latent_layer(table, method=arg)
    return None


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
    elif kind == "color":
        d.rectangle((10, 30, 26, 44), fill=legend.get("color", "#000000"), outline="black")
        d.text((34, 31), str(legend.get("label", ""))[:24], fill="black", font=f)
    elif kind == "rgb":
        d.text((10, 8), f"latents: {legend.get('method', 'pca')}", fill="black", font=f)
        for i, (ch, name) in enumerate(zip(("red", "green", "blue"), legend.get("columns", []))):
            d.rectangle((10, 30 + 20 * i, 26, 44 + 20 * i), fill=ch)
            d.text((34, 31 + 20 * i), str(name), fill="black", font=f)
    return np.asarray(panel)


def with_legends(img: np.ndarray, layers: Sequence[Any]) -> np.ndarray:
    """``img`` (H, W, 3) uint8 with one legend panel per layer that has a legend drawn to its right,
    on white (the PNGs of ``wsi-lab overlay-predictions`` and ``wsi-lab overlay --legend``)."""
    panels = [_legend_panel(lg, img.shape[0]) for lg in (lay.legend() for lay in layers)
              if lg.get("type") in ("continuous", "categorical", "rgb", "color")]
    if not panels:
        return img
    h = max(img.shape[0], *(p.shape[0] for p in panels))
    canvas = np.full((h, img.shape[1] + sum(p.shape[1] for p in panels), 3), 255, np.uint8)
    canvas[:img.shape[0], :img.shape[1]] = img[..., :3]
    x = img.shape[1]
    for p in panels:
        canvas[:p.shape[0], x:x + p.shape[1]] = p
        x += p.shape[1]
    return canvas


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
        img = with_legends(img, [layer])
    save_image(img, path, compress_level=1)  # per-tile colours compress poorly: level 6 costs ~2x the time
    return Path(path)
