"""Gated attention multiple-instance learning (Ilse, Tomczak & Welling, ICML 2018) over per-slide
bags of tile features, with reproducible bag sampling (``max_tiles``)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from wsi_lab.errors import InvalidParameterError

__all__ = ["AttentionMIL", "sample_bag"]


def sample_bag(n_tiles: int, max_tiles: int | None, seed: int, key: str = "", epoch: int | None = None) -> np.ndarray:
    """Indices (sorted) of at most ``max_tiles`` of ``n_tiles`` tiles, drawn without replacement. The
    draw depends only on ``(seed, key, epoch)`` (``key``: the slide id), so it is the same on every
    run, process and rank; ``epoch=None`` gives the fixed draw used for evaluation."""
    if max_tiles is None or n_tiles <= max_tiles:
        return np.arange(n_tiles)
    if max_tiles < 1:
        raise InvalidParameterError(f"max_tiles must be >= 1, got {max_tiles}")
    entropy = [int(seed) & 0xFFFFFFFF, zlib.crc32(key.encode())] + ([] if epoch is None else [int(epoch) + 1])
    rng = np.random.default_rng(entropy)
    return np.sort(rng.choice(n_tiles, size=max_tiles, replace=False))


class AttentionMIL(nn.Module):
    """Gated attention MIL: each tile feature ``h_k`` (``in_dim``) is embedded (Linear-ReLU to
    ``hidden_dim``), scored ``a_k = w^T (tanh(V h_k) ⊙ sigm(U h_k))`` and softmax-normalised over the
    bag; the slide embedding ``Σ a_k h_k`` is classified into ``num_classes`` (logits).

    ``forward(bags, mask=None)`` takes ``(B, N, in_dim)`` (or one ``(N, in_dim)`` bag) and an optional
    boolean ``(B, N)`` mask of real tiles (padding excluded); returns ``(logits (B, C), attention (B, N))``."""

    kind = "mil"

    def __init__(self, in_dim: int, num_classes: int = 2, hidden_dim: int = 256, attention_dim: int = 128,
                 dropout: float = 0.0, classes: Sequence[str] | None = None) -> None:
        super().__init__()
        if classes is not None:
            num_classes = len(classes)
        if in_dim < 1 or num_classes < 2:
            raise InvalidParameterError(f"AttentionMIL needs in_dim >= 1 and >= 2 classes, got in_dim={in_dim}, "
                                        f"num_classes={num_classes}")
        self.in_dim, self.num_classes = int(in_dim), int(num_classes)
        self.hidden_dim, self.attention_dim, self.dropout = int(hidden_dim), int(attention_dim), float(dropout)
        self.classes = [str(c) for c in classes] if classes is not None else [str(i) for i in range(num_classes)]
        self.embed = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.attention_v = nn.Sequential(nn.Linear(hidden_dim, attention_dim), nn.Tanh())
        self.attention_u = nn.Sequential(nn.Linear(hidden_dim, attention_dim), nn.Sigmoid())
        self.attention_w = nn.Linear(attention_dim, 1)
        self.classifier = nn.Linear(hidden_dim, num_classes)

    @property
    def config(self) -> dict[str, Any]:
        """The options that rebuild this model with :func:`wsi_lab.models.build_model`."""
        return {"name": "abmil", "in_dim": self.in_dim, "num_classes": self.num_classes, "hidden_dim": self.hidden_dim,
                "attention_dim": self.attention_dim, "dropout": self.dropout, "classes": list(self.classes)}

    def forward(self, bags: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if bags.ndim == 2:
            bags = bags.unsqueeze(0)
            mask = None if mask is None else mask.reshape(1, -1)
        if bags.ndim != 3 or bags.shape[-1] != self.in_dim:
            raise InvalidParameterError(f"AttentionMIL expects (B, N, {self.in_dim}) bags, got {tuple(bags.shape)}")
        h = self.embed(bags)                                            # (B, N, L)
        scores = self.attention_w(self.attention_v(h) * self.attention_u(h)).squeeze(-1)  # (B, N)
        if mask is not None:
            scores = scores.masked_fill(~mask.bool(), float("-inf"))
        attention = torch.softmax(scores, dim=1)
        slide = torch.bmm(attention.unsqueeze(1), h).squeeze(1)       # (B, L)
        return self.classifier(slide), attention
