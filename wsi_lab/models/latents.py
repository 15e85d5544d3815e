"""The VAE latent table of the classic workshop: each tile's location plus ``z_00..z_NN`` (the
posterior mean), as new columns of the TileTable."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from wsi_lab.errors import InvalidParameterError

__all__ = ["latent_columns", "latent_table"]


def latent_columns(n: int) -> list[str]:
    """``["z_00", ..., "z_<n-1>"]`` (two digits while n <= 100)."""
    width = max(2, len(str(n - 1)))
    return [f"z_{i:0{width}d}" for i in range(n)]


@torch.no_grad()
def latent_table(vae, table: pd.DataFrame, batch_size: int = 256, num_workers: int = 0,
                 device: str | torch.device = "cpu") -> pd.DataFrame:
    """A copy of ``table`` with the VAE's latent means as columns ``z_00..``: tiles are read from the
    slides (``wsi_lab.data.TileDataset``), so ``tile_size`` must equal the VAE's ``input_size``."""
    from wsi_lab.data.dataset import TileDataset

    sizes = set(pd.unique(table["tile_size"]).tolist()) if len(table) else set()
    if sizes - {vae.input_size}:
        raise InvalidParameterError(f"the table's tile_size {sorted(sizes)} differs from the VAE's input_size "
                                    f"{vae.input_size}; re-tile or build the VAE with input_size={sorted(sizes)[0]}")
    vae = vae.to(device).eval()
    loader: torch.utils.data.DataLoader = torch.utils.data.DataLoader(TileDataset(table), batch_size=batch_size, num_workers=num_workers)
    out = [vae.encode(images.to(device)).float().cpu().numpy() for images, _ in loader]
    z = np.concatenate(out) if out else np.zeros((0, vae.latent_dim), np.float32)
    result = table.copy()
    for i, col in enumerate(latent_columns(vae.latent_dim)):
        result[col] = z[:, i].astype(np.float32)
    result.attrs = dict(table.attrs)
    return result
