"""Training recipes, one per task, in one registry (torchtune style: plain functions over the spec).

A recipe is ``run(spec, ctx) -> dict``. The supervised ones (``vae``, ``classify``, ``mil``) build
:class:`~wsi_lab.train.loop.Parts` (model, datasets, a step function, metrics) and hand them to the one
loop :func:`~wsi_lab.train.loop.fit`; ``features`` extracts per-slide feature files. The CLI and the
spec's validation read :data:`RECIPES` rather than a hand-kept list.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from wsi_lab.errors import DataError, InvalidParameterError
from wsi_lab.train.data import job_data, load_job_table, model_input_size
from wsi_lab.train.loop import Parts, classification_metrics, fit

log = logging.getLogger(__name__)

__all__ = ["Recipe", "RECIPES", "register_recipe", "get_recipe"]


@dataclass(frozen=True)
class Recipe:
    """A task's recipe: ``run(spec, ctx)`` does the job and returns a summary dict."""

    task: str
    description: str
    run: Callable[[Any, Any], dict]


RECIPES: dict[str, Recipe] = {}


def register_recipe(task: str, description: str) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn(spec, ctx) -> dict`` as the recipe of ``task``."""
    def deco(fn: Callable) -> Callable:
        RECIPES[task] = Recipe(task, description, fn)
        return fn
    return deco


def get_recipe(task: str) -> Recipe:
    if task not in RECIPES:
        raise InvalidParameterError(f"job spec key 'task': no recipe for {task!r}; known: {', '.join(sorted(RECIPES))}")
    return RECIPES[task]


_WEIGHT_KEYS = ("weights", "sha256")


def _model_config(spec, **fixed: Any) -> dict[str, Any]:
    return {**{k: v for k, v in spec.model.items() if k not in _WEIGHT_KEYS}, **fixed}


def _tile_sets(data):
    from wsi_lab.train.data import job_datasets

    return job_datasets(data)  # TileDataset or PatchDataset over the whole table: one class index for every split


# -- vae ---------------------------------------------------------------------------------------
def _vae_step(model, batch, device):
    from wsi_lab.models.vae import vae_loss

    x = batch[0].to(device, non_blocking=True)
    recon, mu, logvar = model(x)
    loss, _, _ = vae_loss(recon, x, mu, logvar)
    return loss, len(x), None


@register_recipe("vae", "the workshop VAE on tiles (summed BCE + KL); loss per tile in metrics.jsonl")
def run_vae(spec, ctx) -> dict:
    from wsi_lab.models.checkpoint import build_model

    data = job_data(spec, labelled=False)
    size = model_input_size(spec, data.tile_size)
    train_set, val_set = _tile_sets(data)
    torch.manual_seed(spec.seed)
    model = build_model(_model_config(spec, input_size=size))
    return fit(spec, ctx, Parts(model, train_set, val_set, _vae_step, loss_is_sum=True))


# -- classify ----------------------------------------------------------------------------------
def _classify_step(model, batch, device):
    x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
    logits = model(x)
    loss = F.cross_entropy(logits.float(), y)
    probs = torch.softmax(logits.detach().float(), 1).cpu().numpy()
    return loss, len(x), (probs, y.cpu().numpy())


@register_recipe("classify", "a tile classifier (small_cnn, resnet18/50, timm:<name>) on the table's labels")
def run_classify(spec, ctx) -> dict:
    from wsi_lab.models.checkpoint import build_model
    from wsi_lab.models.weights import load_weights

    if spec.data.get("format") == "tfrecord":  # TFRecord shards: the Keras path
        from wsi_lab.train.keras import run_keras_classify

        return run_keras_classify(spec, ctx)
    data = job_data(spec, labelled=True)
    size = model_input_size(spec, data.tile_size)
    train_set, val_set = _tile_sets(data)
    on_epoch = None
    if spec.sampler is not None:  # balanced tiles on a ratio column such as tumor_ratio
        from wsi_lab.train.sampling import balanced_train_set

        train_set, on_epoch = balanced_train_set(spec, train_set.dataset, data.train, data.table)
    torch.manual_seed(spec.seed)
    model = build_model(_model_config(spec, input_size=size, classes=data.classes))
    if spec.model.get("weights"):
        load_weights(getattr(model, "backbone"), spec.model["weights"], spec.model.get("sha256"))  # noqa: B009
    return fit(spec, ctx, Parts(model, train_set, val_set, _classify_step, metrics=classification_metrics,
                                classes=data.classes, on_epoch=on_epoch))


# -- mil ---------------------------------------------------------------------------------------
class BagDataset(torch.utils.data.Dataset):
    """One item per slide: ``(features (n, D) of at most max_tiles tiles, label index)``; training bags
    are re-drawn each epoch (:func:`~wsi_lab.models.mil.sample_bag` with the epoch), evaluation bags are fixed."""

    def __init__(self, bags: list[tuple[str, np.ndarray, int]], max_tiles: int | None, seed: int, train: bool):
        self.bags, self.max_tiles, self.seed, self.train, self.epoch = bags, max_tiles, seed, train, 0

    def __len__(self) -> int:
        return len(self.bags)

    def __getitem__(self, i: int):
        from wsi_lab.models.mil import sample_bag

        sid, feats, label = self.bags[i]
        idx = sample_bag(len(feats), self.max_tiles, self.seed, sid, self.epoch if self.train else None)
        return torch.from_numpy(np.ascontiguousarray(feats[idx], dtype=np.float32)), label


def _pad_bags(items):
    n = max(len(f) for f, _ in items)
    bags = torch.zeros(len(items), n, items[0][0].shape[1])
    mask = torch.zeros(len(items), n, dtype=torch.bool)
    for i, (f, _) in enumerate(items):
        bags[i, : len(f)], mask[i, : len(f)] = f, True
    return bags, mask, torch.tensor([lab for _, lab in items], dtype=torch.long)


def _mil_step(model, batch, device):
    bags, mask, y = (t.to(device) for t in batch)
    logits, _ = model(bags, mask)
    loss = F.cross_entropy(logits.float(), y)
    return loss, len(y), (torch.softmax(logits.detach().float(), 1).cpu().numpy(), y.cpu().numpy())


def _slide_labels(spec, table) -> dict[str, tuple[str, str]]:
    from wsi_lab.data.tile_reader import label_key

    for col in (spec.label_column, spec.split_column):
        if col not in table.columns:
            raise DataError(f"{spec.table}: no {col!r} column; MIL needs slide labels and splits")
    out = {}
    for sid, g in table.groupby("slide_id", sort=True):
        labels, splits = pd_unique(g[spec.label_column]), pd_unique(g[spec.split_column])
        if len(labels) != 1 or len(splits) != 1:
            raise DataError(f"slide {sid!r}: MIL needs one label and one split per slide, got labels {labels} "
                            f"and splits {splits}")
        out[str(sid)] = (label_key(labels[0]), str(splits[0]))
    return out


def pd_unique(col) -> list:
    return [v for v in col.dropna().unique().tolist()]


@register_recipe("mil", "gated attention MIL (abmil) over the per-slide feature files of a features job")
def run_mil(spec, ctx) -> dict:
    from wsi_lab.models.checkpoint import build_model
    from wsi_lab.train.features import read_features

    table = load_job_table(spec.table)
    slides = _slide_labels(spec, table)
    classes = sorted({lab for lab, _ in slides.values()})
    index = {c: i for i, c in enumerate(classes)}
    bags: dict[str, list] = {spec.train_split: [], spec.val_split: []}
    dim: int | None = None
    for sid, (label, split) in slides.items():
        if split not in bags:
            continue
        feats, _, meta = read_features(spec.features, sid)
        if dim is not None and feats.shape[1] != dim:
            raise DataError(f"{spec.features}: slide {sid!r} has {feats.shape[1]}-d features, others {dim}-d")
        dim = feats.shape[1]
        bags[split].append((sid, feats, index[label]))
    train, val = bags[spec.train_split], bags[spec.val_split]
    if not train:
        raise DataError(f"{spec.table}: no slide in the training split {spec.train_split!r}")
    present = sorted({classes[b[2]] for b in train})
    if len(present) < 2:
        raise DataError(f"{spec.table}: the training split has {len(present)} class(es) {present}; MIL needs two")
    train_set = BagDataset(train, spec.max_tiles, spec.seed, True)
    val_set = BagDataset(val, spec.max_tiles, spec.seed, False)
    torch.manual_seed(spec.seed)
    model = build_model(_model_config(spec, in_dim=int(dim or 0), classes=classes))

    def on_epoch(epoch: int) -> None:
        train_set.epoch = epoch

    return fit(spec, ctx, Parts(model, train_set, val_set, _mil_step, collate=_pad_bags,
                                metrics=classification_metrics, classes=classes, on_epoch=on_epoch))


# -- features ----------------------------------------------------------------------------------
@register_recipe("features", "one feature file per slide from an encoder (resumable per slide)")
def run_features(spec, ctx) -> dict:
    from wsi_lab.train.features import extract_features

    return extract_features(spec, ctx)


# -- segment (its own module; registered on import) ----------------------------------------------
from wsi_lab.train import recipe_segment as _recipe_segment  # noqa: E402,F401
