"""A small registry of known tile encoders (feature extractors) and the module that runs one.

Each :class:`EncoderInfo` records the architecture, input size (pixels), µm/px it was trained at,
normalisation, pooling (``cls``, ``cls+mean`` = CLS concatenated with the mean of the patch tokens, or
``avg`` for CNNs) and output dimension. Weights only ever come from a local file the user names,
checked by SHA-256 when one is given (or recorded in the registry); nothing is downloaded.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from wsi_lab.errors import InvalidParameterError, MissingDependencyError

__all__ = ["EncoderInfo", "ENCODERS", "encoder_info", "build_encoder", "FeatureEncoder"]

_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass(frozen=True)
class EncoderInfo:
    """What is known about one encoder. ``source``: ``timm`` or ``torchvision``; ``arch``: the model
    name there; ``kwargs``: the constructor options that give the published architecture."""

    name: str
    source: str
    arch: str
    input_size: int
    mpp: float | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pooling: str
    dim: int
    kwargs: dict[str, Any] = field(default_factory=dict)
    sha256: str | None = None
    notes: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _hoptimus0_kwargs() -> dict[str, Any]:
    # ViT-g/14, 4 register tokens, SwiGLU MLP, LayerScale 1e-5 (RECIPES.md); classes/objects named by
    # string so this module stays importable without torch/timm
    return {"img_size": 224, "init_values": 1e-5, "mlp_ratio": 5.33334, "mlp_layer": "SwiGLUPacked",
            "act_layer": "SiLU", "dynamic_img_size": False}


ENCODERS: dict[str, EncoderInfo] = {
    "h-optimus-0": EncoderInfo(
        "h-optimus-0", "timm", "vit_giant_patch14_reg4_dinov2", 224, 0.5,
        (0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517), "cls", 1536, _hoptimus0_kwargs(),
        notes="Bioptimus H-optimus-0 (ViT-g/14, 4 registers); fp16/bf16 autocast on GPU"),
    "uni": EncoderInfo(
        "uni", "timm", "vit_large_patch16_224", 224, 0.5, *_IMAGENET, "cls", 1024,
        {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "dynamic_img_size": True},
        notes="MahmoodLab UNI (ViT-L/16)"),
    "resnet50": EncoderInfo("resnet50", "torchvision", "resnet50", 224, None, *_IMAGENET, "avg", 2048,
                            notes="ImageNet ResNet-50, global average pool"),
    "resnet18": EncoderInfo("resnet18", "torchvision", "resnet18", 224, None, *_IMAGENET, "avg", 512,
                            notes="ImageNet ResNet-18, global average pool"),
}


def encoder_info(name: str, **overrides: Any) -> EncoderInfo:
    """The registry entry for ``name`` (``timm:<model>`` for any timm model, pooled as timm does), with
    ``overrides`` of its fields or, for unknown keys, of its constructor ``kwargs`` (e.g. ``depth=2``
    for a test-sized model)."""
    if name in ENCODERS:
        info = ENCODERS[name]
    elif name.startswith("timm:") and len(name) > 5:
        info = EncoderInfo(name, "timm", name[5:], 224, None, *_IMAGENET, "timm", 0)
    else:
        raise InvalidParameterError(f"unknown encoder {name!r}; known: {', '.join(ENCODERS)} or timm:<model name>")
    fields = set(EncoderInfo.__dataclass_fields__) - {"name", "source", "arch", "kwargs"}
    own = {k: v for k, v in overrides.items() if k in fields}
    kwargs = {**info.kwargs, **{k: v for k, v in overrides.items() if k not in fields}}
    if "input_size" in own and "img_size" in kwargs:
        kwargs["img_size"] = int(own["input_size"])
    if "mean" in own:
        own["mean"] = tuple(own["mean"])
    if "std" in own:
        own["std"] = tuple(own["std"])
    if own.get("pooling", info.pooling) not in ("cls", "cls+mean", "avg", "timm"):
        raise InvalidParameterError(f"encoder pooling {own['pooling']!r}: use cls, cls+mean, avg or timm")
    return EncoderInfo(**{**asdict(info), **own, "kwargs": kwargs})


def _resolve_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    import timm
    import torch

    out = dict(kwargs)
    if isinstance(out.get("mlp_layer"), str):
        out["mlp_layer"] = getattr(timm.layers, out["mlp_layer"])
    if isinstance(out.get("act_layer"), str):
        out["act_layer"] = getattr(torch.nn, out["act_layer"])
    return out


def build_encoder(name: str, weights: str | os.PathLike | None = None, sha256: str | None = None, **overrides: Any):
    """A :class:`FeatureEncoder` for registry entry ``name`` with random init, then the local
    ``weights`` file loaded (SHA-256 checked against ``sha256`` or the registry's). Input: ``(N, 3, S, S)``
    floats in [0, 1] with ``S = info.input_size``; output ``(N, info.dim)``."""
    info = encoder_info(name, **overrides)
    return FeatureEncoder(info, weights=weights, sha256=sha256 or info.sha256)


def _make_backbone(info: EncoderInfo):
    if info.source == "torchvision":
        try:
            import torchvision
        except ImportError as exc:
            raise MissingDependencyError("torchvision", "train", f"the {info.name} encoder") from exc
        model = getattr(torchvision.models, info.arch)(weights=None, **info.kwargs)
        import torch

        nf = int(model.fc.in_features)
        model.fc = torch.nn.Identity()
        return model, nf
    try:
        import timm
    except ImportError as exc:
        raise MissingDependencyError("timm", "train", f"the {info.name} encoder") from exc
    try:
        model = timm.create_model(info.arch, pretrained=False, num_classes=0, **_resolve_kwargs(info.kwargs))
    except (RuntimeError, AssertionError, TypeError) as exc:  # unknown model, inconsistent sizes or options
        raise InvalidParameterError(f"encoder {info.name!r} with {info.kwargs}: {exc or type(exc).__name__}") from exc
    return model, int(getattr(model, "num_features"))  # noqa: B009 (typed as Tensor | Module by torch)


def _encoder_module():
    import torch
    from torch import nn

    class _FeatureEncoder(nn.Module):
        kind = "encoder"
        mean: torch.Tensor
        std: torch.Tensor

        def __init__(self, info: EncoderInfo, weights=None, sha256=None) -> None:
            super().__init__()
            self.backbone, nf = _make_backbone(info)
            dim = nf * 2 if info.pooling == "cls+mean" else nf  # the real output size (overrides change it)
            self.info = info = EncoderInfo(**{**asdict(info), "dim": dim})
            self.weights_sha256 = None
            if weights is not None:
                from wsi_lab.io import file_sha256
                from wsi_lab.models.weights import load_weights

                load_weights(self.backbone, weights, sha256, allow_new_head=False)
                self.weights_sha256 = sha256 or file_sha256(weights)
            self.register_buffer("mean", torch.tensor(info.mean).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(info.std).view(1, 3, 1, 1), persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            s = self.info.input_size
            if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != (s, s):
                raise InvalidParameterError(f"encoder {self.info.name} expects (N, 3, {s}, {s}) input in [0, 1], "
                                            f"got {tuple(x.shape)}")
            x = (x - self.mean) / self.std
            if self.info.pooling in ("cls", "cls+mean") and hasattr(self.backbone, "forward_features"):
                tokens = self.backbone.forward_features(x)            # (N, prefix + patches, D)
                cls = tokens[:, 0]
                if self.info.pooling == "cls":
                    return cls
                prefix = int(getattr(self.backbone, "num_prefix_tokens", 1))
                return torch.cat([cls, tokens[:, prefix:].mean(1)], dim=1)
            return self.backbone(x)

        def metadata(self) -> dict[str, Any]:
            """What a feature file records about the encoder that wrote it."""
            return {"backbone": self.info.name, "arch": self.info.arch, "weights_sha256": self.weights_sha256,
                    "input_size": self.info.input_size, "mpp": self.info.mpp, "mean": list(self.info.mean),
                    "std": list(self.info.std), "pooling": self.info.pooling, "dim": self.info.dim}

    return _FeatureEncoder


_CLASS = None


def FeatureEncoder(info: EncoderInfo, weights=None, sha256=None):
    """An ``nn.Module`` running encoder ``info`` (see :func:`build_encoder`); defined on first use so
    this registry imports without torch."""
    global _CLASS
    if _CLASS is None:
        _CLASS = _encoder_module()
    return _CLASS(info, weights, sha256)
