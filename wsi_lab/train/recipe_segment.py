"""The ``segment`` recipe: a DeepLabV3 or U-Net on TileTable tiles with label masks rasterised on
the fly from the slides' annotations (ASAP XML / QuPath GeoJSON, a :class:`LabelMap`), a cross
entropy + soft Dice loss, per-class IoU and Dice (``miou``, ``dice``, ``iou_<class>``,
``dice_<class>``) in ``metrics.jsonl``, and optional balanced sampling on the tiles' ``tumor_ratio``
(spec key ``sampler``: ``positive_fraction`` of each epoch's training tiles above ``threshold``) with
optional hard-negative mining (``sampler.hard_negatives``: :mod:`wsi_lab.train.mining`)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from wsi_lab.annotations import AnnotationSet, LabelMap, annotations_by_slide, rasterize, tile_class_fractions
from wsi_lab.errors import DataError
from wsi_lab.train.data import check_slides, job_data, model_input_size
from wsi_lab.train.loop import Parts, fit
from wsi_lab.train.mining import HardNegativeMiner, check_hard_negatives
from wsi_lab.train.recipes import _model_config, register_recipe
from wsi_lab.train.sampling import BalancedView, balanced_train_set

log = logging.getLogger(__name__)

__all__ = ["SegmentationTiles", "segmentation_metrics", "dice_ce_loss", "run_segment", "slide_geometry"]


def slide_geometry(table: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """``{slide_id: {"dimensions", "downsamples"}}`` of the table's slides (their headers, read once)."""
    from wsi_lab.slide import open_slide

    out = {}
    for sid, path in check_slides(table).items():
        s = open_slide(path)
        try:
            out[sid] = {"dimensions": tuple(s.dimensions), "downsamples": [float(d) for d in s.level_downsamples]}
        finally:
            s.close()
    return out


class SegmentationTiles(torch.utils.data.Dataset):
    """Item ``i``: ``(image (3, H, W) float in [0, 1], mask (H, W) int64 class indices)`` for row ``i``
    of ``table``; the mask is rasterised from ``annotations[slide_id]`` over the tile's level-0 box at
    the tile's output resolution (a slide without annotations is all background)."""

    def __init__(self, table: pd.DataFrame, annotations: Mapping[str, AnnotationSet | None], label_map: LabelMap,
                 geometry: Mapping[str, Mapping[str, Any]]) -> None:
        from wsi_lab.data.dataset import TileDataset

        self.tiles = TileDataset(table, label_column="__none__")
        self.annotations, self.label_map = dict(annotations), label_map
        sids = table["slide_id"].astype(str).to_numpy()
        self._sids = sids
        level = table["level"].to_numpy(np.int64)
        ds = np.array([float(geometry[s]["downsamples"][lv]) for s, lv in zip(sids, level)])
        self._box = np.stack([table["x"].to_numpy(float), table["y"].to_numpy(float),
                              table["read_size"].to_numpy(float) * ds, table["tile_size"].to_numpy(float)], 1)

    def __len__(self) -> int:
        return len(self._sids)

    def mask(self, i: int) -> np.ndarray:
        """The label mask of row ``i`` ((tile_size, tile_size) uint8)."""
        x, y, extent, size = self._box[i]
        aset = self.annotations.get(self._sids[i])
        side = int(size)
        if aset is None or not aset.regions:
            return np.zeros((side, side), np.uint8)
        return rasterize(aset, self.label_map, size=(side, side), downsample=extent / size, origin=(x, y))

    def __getitem__(self, i: int):
        image, _ = self.tiles[int(i)]
        return image, torch.from_numpy(self.mask(int(i)).astype(np.int64))


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 1.0, eps: float = 1.0) -> torch.Tensor:
    """Mean pixel cross entropy + ``dice_weight`` × (1 − soft Dice averaged over classes)."""
    logits = logits.float()
    ce = F.cross_entropy(logits, target)
    if not dice_weight:
        return ce
    probs = torch.softmax(logits, 1)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    inter = (probs * onehot).sum((0, 2, 3))
    denom = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    dice = (2 * inter + eps) / (denom + eps)
    return ce + dice_weight * (1 - dice.mean())


def _confusion(pred: torch.Tensor, target: torch.Tensor, k: int) -> np.ndarray:
    idx = (target.reshape(-1) * k + pred.reshape(-1)).cpu().numpy()
    return np.bincount(idx, minlength=k * k).reshape(k, k)


def segmentation_metrics(confusions: list[np.ndarray], classes: list[str]) -> dict[str, float | None]:
    """From summed confusion matrices (rows: truth, columns: prediction): ``accuracy`` (pixels),
    ``miou`` (mean IoU over classes present in truth or prediction), ``dice`` (mean Dice over the
    foreground classes present), and ``iou_<class>`` / ``dice_<class>`` (``None`` when undefined)."""
    cm = np.sum(confusions, axis=0).astype(np.float64)
    tp = np.diag(cm)
    fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
    res: dict[str, float | None] = {"accuracy": float(tp.sum() / cm.sum()) if cm.sum() else None}
    ious: list[float] = []
    dices: list[float] = []
    for c, name in enumerate(classes):
        denom = tp[c] + fp[c] + fn[c]
        iou = float(tp[c] / denom) if denom else None
        dice = float(2 * tp[c] / (2 * tp[c] + fp[c] + fn[c])) if denom else None
        res[f"iou_{name}"], res[f"dice_{name}"] = iou, dice
        if iou is not None and dice is not None:
            ious.append(iou)
            if c > 0:
                dices.append(dice)
    res["miou"] = float(np.mean(ious)) if ious else None
    res["dice"] = float(np.mean(dices)) if dices else None
    return res


def _step(k: int, dice_weight: float):
    def step(model, batch, device):
        x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        n = len(x)
        if model.training and n == 1:  # BatchNorm (DeepLab's image pooling) needs two samples: add the mirror
            x, y = torch.cat([x, x.flip(-1)]), torch.cat([y, y.flip(-1)])
        logits = model(x)
        loss = dice_ce_loss(logits, y, dice_weight)
        return loss, n, _confusion(logits.detach().argmax(1)[:n], y[:n], k)
    return step


@register_recipe("segment", "DeepLabV3 / U-Net on tiles with masks rasterised from ASAP XML or QuPath GeoJSON "
                            "annotations; miou and dice per class in metrics.jsonl")
def run_segment(spec, ctx) -> dict:
    from wsi_lab.models.checkpoint import build_model
    from wsi_lab.models.segmentation import load_segmentation_weights

    data = job_data(spec, labelled=False)
    size = model_input_size(spec, data.tile_size)
    table = data.table
    geometry = slide_geometry(table)
    annotations = annotations_by_slide(spec.annotations, sorted(geometry))
    labels = sorted({lab for a in annotations.values() if a is not None for lab in a.labels})
    if not labels:
        raise DataError(f"{spec.annotations}: no annotated region for any slide of {spec.table}")
    label_map = LabelMap.of(spec.label_map, labels)
    for sid, aset in annotations.items():
        if aset is not None:
            aset.check_inside(geometry[sid]["dimensions"])
            for r in aset.regions:
                label_map.index_of(aset, r)  # unknown labels fail here, naming the file and region
    base = SegmentationTiles(table, annotations, label_map, geometry)
    train_set: torch.utils.data.Dataset = torch.utils.data.Subset(base, data.train.tolist())
    on_epoch = None
    if spec.sampler is not None:
        column = str(spec.sampler.get("column", "tumor_ratio"))
        if column not in table.columns:
            table = tile_class_fractions(table, annotations, label_map,
                                         downsamples={s: g["downsamples"] for s, g in geometry.items()})
        train_set, on_epoch = balanced_train_set(spec, base, data.train, table)
    val_set = torch.utils.data.Subset(base, data.val.tolist())
    torch.manual_seed(spec.seed)
    opts = _model_config(spec, input_size=size, classes=list(label_map.classes))
    dice_weight = float(opts.pop("dice_weight", 1.0))
    if not math.isfinite(dice_weight) or dice_weight < 0:
        raise DataError(f"job spec key 'model': dice_weight must be >= 0, got {dice_weight}")
    model = build_model(opts)
    if spec.model.get("weights"):
        load_segmentation_weights(model, spec.model["weights"], spec.model.get("sha256"))  # type: ignore[arg-type]
    if isinstance(train_set, BalancedView) and spec.sampler and spec.sampler.get("hard_negatives") is not None:
        hn = check_hard_negatives(spec.sampler["hard_negatives"], spec.task)
        train_set.miner = HardNegativeMiner(base, train_set.negative_rows, model, ctx, spec, hn)
    classes = list(label_map.classes)
    return fit(spec, ctx, Parts(model, train_set, val_set, _step(len(classes), dice_weight),
                                metrics=lambda outs: segmentation_metrics(outs, classes), classes=classes,
                                on_epoch=on_epoch))
