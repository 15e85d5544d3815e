"""The variational auto-encoder of the classic pathology workshop, with its input and latent size
configurable.

Default preset (``VAE()``): 64×64 RGB tiles in [0, 1]; encoder of four stride-2 4×4 convolutions
32→64→128→256 (BatchNorm after the third), flattened to ``h_dim`` = 1024; ``fc_mu`` / ``fc_logvar``
to 32 latents; ``fc`` back to 1024; a transposed-convolution decoder 1024→128→64→32→3 (kernels 5, 5,
6, 6, stride 2, BatchNorm after the second) ending in a sigmoid. Loss: summed binary cross-entropy +
KL divergence. Other input sizes must be multiples of 16 (≥ 64): the encoder's flatten size follows
the input size, and the decoder starts from a ``(h_dim, s, s)`` map with ``s = input_size / 16 - 3``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from wsi_lab.errors import InvalidParameterError

__all__ = ["VAE", "vae_loss"]


def _conv_out(n: int) -> int:
    return (n - 4) // 2 + 1


class VAE(nn.Module):
    """Convolutional VAE over ``(N, 3, input_size, input_size)`` float tensors in [0, 1].

    ``forward(x)`` returns ``(reconstruction, mu, logvar)``; ``encode(x)`` returns ``mu`` (deterministic,
    for inference and latent tables); ``decode(z)`` maps latents back to images."""

    kind = "vae"

    def __init__(self, input_size: int = 64, latent_dim: int = 32, h_dim: int = 1024, in_channels: int = 3) -> None:
        super().__init__()
        if input_size < 64 or input_size % 16:
            raise InvalidParameterError(f"VAE input_size must be a multiple of 16 and >= 64, got {input_size}")
        if latent_dim < 1 or h_dim < 1 or in_channels < 1:
            raise InvalidParameterError(f"VAE sizes must be positive: latent_dim={latent_dim}, h_dim={h_dim}, "
                                        f"in_channels={in_channels}")
        self.input_size, self.latent_dim, self.h_dim, self.in_channels = input_size, latent_dim, h_dim, in_channels
        e = input_size
        for _ in range(4):
            e = _conv_out(e)
        self.flat_dim = 256 * e * e  # 1024 for 64×64 input
        self.dec_size = input_size // 16 - 3  # 1 for 64×64 input
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, 32, 4, stride=2), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 128, 4, stride=2), nn.BatchNorm2d(128), nn.ReLU(),
            nn.Conv2d(128, 256, 4, stride=2), nn.ReLU(),
            nn.Flatten(),
        )
        self.fc_mu = nn.Linear(self.flat_dim, latent_dim)
        self.fc_logvar = nn.Linear(self.flat_dim, latent_dim)
        self.fc = nn.Linear(latent_dim, h_dim * self.dec_size * self.dec_size)
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(h_dim, 128, 5, stride=2), nn.ReLU(),
            nn.ConvTranspose2d(128, 64, 5, stride=2), nn.BatchNorm2d(64), nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 6, stride=2), nn.ReLU(),
            nn.ConvTranspose2d(32, in_channels, 6, stride=2), nn.Sigmoid(),
        )

    @property
    def config(self) -> dict[str, Any]:
        """The options that rebuild this model with :func:`wsi_lab.models.build_model`."""
        return {"name": "vae", "input_size": self.input_size, "latent_dim": self.latent_dim, "h_dim": self.h_dim,
                "in_channels": self.in_channels}

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[-2:] != (self.input_size, self.input_size):
            raise InvalidParameterError(f"VAE expects (N, {self.in_channels}, {self.input_size}, {self.input_size}) "
                                        f"input, got {tuple(x.shape)}")

    def encode_distribution(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)`` of the approximate posterior, each ``(N, latent_dim)``."""
        self._check(x)
        h = self.encoder(x)
        return self.fc_mu(h), self.fc_logvar(h)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior mean ``mu`` (N, latent_dim): deterministic, no sampling."""
        return self.encode_distribution(x)[0]

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """``mu + eps * std`` with ``eps ~ N(0, 1)`` drawn on ``mu``'s device (no CUDA-only calls)."""
        std = torch.exp(0.5 * logvar)
        return mu + torch.randn_like(std) * std

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images (N, C, input_size, input_size) in [0, 1] from latents (N, latent_dim)."""
        h = self.fc(z).view(-1, self.h_dim, self.dec_size, self.dec_size)
        return self.decoder(h)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode_distribution(x)
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar


def vae_loss(recon: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, bce, kld)``: summed binary cross-entropy of the reconstruction plus the KL divergence
    of ``N(mu, exp(logvar))`` from ``N(0, 1)``, both summed over the batch (the workshop's loss)."""
    bce = F.binary_cross_entropy(recon.float(), x.float(), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld, bce, kld
