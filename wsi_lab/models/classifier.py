"""Tile classifiers: a small teaching CNN and standard backbones (torchvision ResNets, any timm model)
with N classes. Input: ``(N, 3, H, W)`` float tensors in [0, 1]; the model normalises internally with
the mean/std in its config, so a loaded checkpoint needs no separate preprocessing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from wsi_lab.errors import InvalidParameterError, MissingDependencyError

__all__ = ["TileClassifier", "SmallCNN", "CLASSIFIER_PRESETS", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLASSIFIER_PRESETS = ("small_cnn", "resnet18", "resnet50", "timm:<name>")


class SmallCNN(nn.Module):
    """The Keras CIFAR-10 example network: two blocks of conv3×3(same)-ReLU-conv3×3(valid)-ReLU-
    maxpool2-dropout(0.25) with 32 then 64 filters, dense 512-ReLU-dropout(0.5), dense ``num_classes``
    (logits; the softmax is in the loss)."""

    def __init__(self, num_classes: int, input_size: int = 32, dropout: float = 0.25, dense_dropout: float = 0.5
                 ) -> None:
        super().__init__()
        side = ((input_size - 2) // 2 - 2) // 2
        if side < 1:
            raise InvalidParameterError(f"small_cnn needs input_size >= 12, got {input_size}")
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(),
            nn.MaxPool2d(2), nn.Dropout(dropout),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.ReLU(),
            nn.MaxPool2d(2), nn.Dropout(dropout),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(nn.Linear(64 * side * side, 512), nn.ReLU(), nn.Dropout(dense_dropout),
                                        nn.Linear(512, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _backbone(name: str, num_classes: int, options: dict[str, Any]) -> tuple[nn.Module, tuple, tuple]:
    if name == "small_cnn":
        opts = {k: options[k] for k in ("dropout", "dense_dropout") if k in options}
        return SmallCNN(num_classes, int(options.get("input_size", 32)), **opts), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if name in ("resnet18", "resnet50"):
        try:
            import torchvision
        except ImportError as exc:
            raise MissingDependencyError("torchvision", "train", f"the {name} backbone") from exc
        return getattr(torchvision.models, name)(weights=None, num_classes=num_classes), IMAGENET_MEAN, IMAGENET_STD
    if name.startswith("timm:") and len(name) > 5:
        try:
            import timm
        except ImportError as exc:
            raise MissingDependencyError("timm", "train", f"the {name} backbone") from exc
        kwargs = {k: v for k, v in options.items() if k not in ("input_size", "mean", "std")}
        try:
            model = timm.create_model(name[5:], pretrained=False, num_classes=num_classes, **kwargs)
        except RuntimeError as exc:  # timm: "Unknown model (...)"
            raise InvalidParameterError(f"model {name!r}: {exc}") from exc
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        return model, tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
    raise InvalidParameterError(f"unknown classifier {name!r}; choose one of {', '.join(CLASSIFIER_PRESETS)}")


class TileClassifier(nn.Module):
    """A tile classifier: ``backbone`` (``small_cnn``, ``resnet18``, ``resnet50`` or ``timm:<name>``)
    with ``num_classes`` outputs (logits). ``classes`` names them (e.g. LUAD / LUSC / normal).
    ``options``: ``input_size`` (tile side in pixels, checked on input), ``mean``/``std`` (override the
    backbone's normalisation), and backbone options (``dropout`` for small_cnn, timm keyword arguments).
    Weights are only ever read from a local file: :func:`wsi_lab.models.weights.load_weights`."""

    kind = "classifier"
    mean: torch.Tensor
    std: torch.Tensor
    backbone: nn.Module

    def __init__(self, backbone: str = "small_cnn", num_classes: int = 2, classes: Sequence[str] | None = None,
                 **options: Any) -> None:
        super().__init__()
        if classes is not None:
            classes = [str(c) for c in classes]
            if num_classes != len(classes):
                num_classes = len(classes)
        if num_classes < 2:
            raise InvalidParameterError(f"a classifier needs at least 2 classes, got {num_classes}")
        self.backbone_name = backbone
        self.num_classes = num_classes
        self.classes = classes or [str(i) for i in range(num_classes)]
        self.options = dict(options)
        self.input_size = int(options.get("input_size", 32 if backbone == "small_cnn" else 224))
        self.backbone, mean, std = _backbone(backbone, num_classes, {**options, "input_size": self.input_size})
        mean, std = tuple(options.get("mean", mean)), tuple(options.get("std", std))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @property
    def config(self) -> dict[str, Any]:
        """The options that rebuild this model with :func:`wsi_lab.models.build_model`."""
        return {"name": self.backbone_name, "num_classes": self.num_classes, "classes": list(self.classes),
                **self.options, "input_size": self.input_size,
                "mean": [float(v) for v in self.mean.flatten()], "std": [float(v) for v in self.std.flatten()]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            raise InvalidParameterError(f"{self.backbone_name} expects (N, 3, {self.input_size}, {self.input_size}) "
                                        f"input in [0, 1], got {tuple(x.shape)}")
        return self.backbone((x - self.mean) / self.std)
