"""Segmentation models behind one class, :class:`SegmentationModel`: torchvision's DeepLabV3
(``deeplabv3``; backbone ``mobilenet_v3_large`` (default) or ``resnet50``) and a compact U-Net
(``unet``). Input ``(N, 3, H, W)`` floats in [0, 1] (normalised inside with the config's mean/std);
output per-pixel logits ``(N, num_classes, H, W)``. Weights are never downloaded: torchvision models
are built with ``weights=None, weights_backbone=None``; a local file is loaded with
:func:`wsi_lab.models.weights.load_weights` (the ``weights`` option of a job spec)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from wsi_lab.errors import InvalidParameterError, MissingDependencyError

__all__ = ["SegmentationModel", "UNet", "SEGMENTATION_PRESETS", "DEEPLAB_BACKBONES", "load_segmentation_weights"]

SEGMENTATION_PRESETS = ("deeplabv3", "unet")
DEEPLAB_BACKBONES = ("mobilenet_v3_large", "resnet50")
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """Ronneberger et al.'s U-Net, compact: ``depth`` levels of two 3×3 conv-BN-ReLU with ``base``,
    2·base, ... channels, max-pool down, bilinear up + skip concatenation, 1×1 head. Any input size
    works (padded to a multiple of 2^depth inside and cropped back)."""

    def __init__(self, num_classes: int, base: int = 16, depth: int = 4) -> None:
        super().__init__()
        if depth < 1 or base < 1:
            raise InvalidParameterError(f"unet needs depth >= 1 and base >= 1, got depth={depth}, base={base}")
        chans = [base * 2 ** i for i in range(depth + 1)]
        self.depth = depth
        self.down = nn.ModuleList([_block(3, chans[0])] + [_block(chans[i], chans[i + 1]) for i in range(depth)])
        self.up = nn.ModuleList([_block(chans[i + 1] + chans[i], chans[i]) for i in reversed(range(depth))])
        self.head = nn.Conv2d(chans[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = 2 ** self.depth
        x = F.pad(x, (0, (-w) % m, 0, (-h) % m), mode="reflect" if min(h, w) > m else "constant")
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for block in self.up:
            skip = skips.pop()
            x = block(torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False), skip], 1))
        return self.head(x)[..., :h, :w]


def _deeplab(backbone: str, num_classes: int) -> nn.Module:
    try:
        from torchvision.models import segmentation as tvseg
    except ImportError as exc:
        raise MissingDependencyError("torchvision", "train", "the deeplabv3 model") from exc
    if backbone not in DEEPLAB_BACKBONES:
        raise InvalidParameterError(f"deeplabv3 backbone {backbone!r} is not one of {', '.join(DEEPLAB_BACKBONES)}")
    build = getattr(tvseg, f"deeplabv3_{backbone}")
    return build(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)


class SegmentationModel(nn.Module):
    """A per-pixel classifier: ``arch`` ``deeplabv3`` (option ``backbone``) or ``unet`` (options
    ``base``, ``depth``) with ``classes`` (index 0 the background). ``input_size``: the tile side it
    was trained on (recorded; any size runs). ``mean``/``std`` override the normalisation (ImageNet
    for DeepLabV3, none for the U-Net)."""

    kind = "segmenter"
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, arch: str = "unet", num_classes: int = 2, classes: Sequence[str] | None = None,
                 input_size: int = 256, **options: Any) -> None:
        super().__init__()
        if classes is not None:
            classes = [str(c) for c in classes]
            num_classes = len(classes)
        if num_classes < 2:
            raise InvalidParameterError(f"a segmentation model needs at least 2 classes (background + one), got {num_classes}")
        self.arch, self.num_classes, self.input_size = arch, int(num_classes), int(input_size)
        self.classes = classes or [str(i) for i in range(num_classes)]
        self.options = dict(options)
        if arch == "deeplabv3":
            unknown = set(options) - {"backbone", "mean", "std"}
            default_norm = _IMAGENET
            self.net = _deeplab(str(options.get("backbone", "mobilenet_v3_large")), self.num_classes)
        elif arch == "unet":
            unknown = set(options) - {"base", "depth", "mean", "std"}
            default_norm = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
            self.net = UNet(self.num_classes, int(options.get("base", 16)), int(options.get("depth", 4)))
        else:
            raise InvalidParameterError(f"unknown segmentation model {arch!r}; choose {', '.join(SEGMENTATION_PRESETS)}")
        if unknown:
            raise InvalidParameterError(f"model {arch!r}: unknown option(s) {sorted(unknown)}")
        mean, std = tuple(options.get("mean", default_norm[0])), tuple(options.get("std", default_norm[1]))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @property
    def backbone(self) -> nn.Module:
        """The module a local weights file loads into (DeepLabV3's ResNet/MobileNet trunk, or the U-Net)."""
        return getattr(self.net, "backbone", self.net)

    @property
    def config(self) -> dict[str, Any]:
        """The options that rebuild this model with :func:`wsi_lab.models.build_model`."""
        return {"name": self.arch, "num_classes": self.num_classes, "classes": list(self.classes),
                **{k: v for k, v in self.options.items() if k not in ("mean", "std")}, "input_size": self.input_size,
                "mean": [float(v) for v in self.mean.flatten()], "std": [float(v) for v in self.std.flatten()]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise InvalidParameterError(f"{self.arch} expects (N, 3, H, W) input in [0, 1], got {tuple(x.shape)}")
        out = self.net((x - self.mean) / self.std)
        return out["out"] if isinstance(out, dict) else out


def load_segmentation_weights(model: SegmentationModel, path: str, sha256: str | None = None) -> list[str]:
    """Load a local weights file into ``model``: a whole segmentation model (torchvision DeepLabV3
    keys ``backbone.*`` / ``classifier.*``, or a U-Net), or an ImageNet classifier of the backbone
    (torchvision ResNet-50 / MobileNetV3 files: ``features.`` prefixes mapped, classification heads
    ``fc.*`` / ``classifier.*`` dropped). Any other mismatch raises :class:`CheckpointError` naming the
    file. Returns the dropped keys."""
    from pathlib import Path

    from wsi_lab.errors import CheckpointError
    from wsi_lab.models.weights import read_state_file

    p = Path(path)
    raw = read_state_file(p, sha256)
    inner = next((raw[k] for k in ("state_dict", "model", "model_state_dict") if isinstance(raw.get(k), dict)), raw)
    state = {k.removeprefix("module."): v for k, v in inner.items() if isinstance(v, torch.Tensor)}
    whole = model.net.state_dict()
    if state and set(state) <= set(whole) and any(k.startswith("backbone.") for k in whole) == any(
            k.startswith("backbone.") for k in state):
        target, dropped = model.net, []
    else:  # a classifier of the backbone architecture
        target = model.backbone
        own = target.state_dict()
        dropped = sorted(k for k in state if k.startswith(("fc.", "classifier.")))
        state = {k.removeprefix("features."): v for k, v in state.items() if k not in dropped}
        unexpected = sorted(set(state) - set(own))
        if unexpected:
            raise CheckpointError(f"{p}: weights do not fit the {model.arch} backbone: unexpected {unexpected[:5]}")
    own = target.state_dict()
    missing = sorted(set(own) - set(state))
    bad = [k for k in state if own[k].shape != state[k].shape]
    if missing or bad:
        raise CheckpointError(f"{p}: weights do not fit the {model.arch} model: missing {missing[:5]}, "
                              f"shape differs for {bad[:5]}")
    target.load_state_dict(state)
    return dropped
