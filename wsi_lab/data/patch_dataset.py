"""The torch dataset over a patch table (:mod:`wsi_lab.data.patches`): the sample contract of
:class:`~wsi_lab.data.dataset.TileDataset` for image files instead of slide tiles. Imports torch."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from wsi_lab.data.patches import image_size
from wsi_lab.errors import DataError, InvalidParameterError, require

if TYPE_CHECKING:
    import torch
else:
    torch = require("torch", "torch", "PatchDataset")

__all__ = ["PatchDataset"]


class PatchDataset(torch.utils.data.Dataset):
    """Map-style dataset over a patch table: item ``i`` is ``(image, label)``. ``image`` is a (C, H, W)
    tensor of the file, resized to ``size``² when ``size`` is given (else every patch must have the one
    size the headers give), float32 in [0, 1] (``dtype="float32"``) or uint8, then passed through
    ``transform``. ``label`` is the class index: classes sorted by name, or ``classes`` when given (-1
    for a label outside them). Safe with ``DataLoader(num_workers>0)`` (it holds only file names)."""

    def __init__(self, table: pd.DataFrame, transform: Callable | None = None, dtype: str = "float32",
                 size: int | None = None, classes: list[str] | None = None) -> None:
        if dtype not in ("float32", "uint8"):
            raise InvalidParameterError(f"dtype must be 'float32' or 'uint8', got {dtype!r}")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise InvalidParameterError(f"size must be a positive integer, got {size!r}")
        missing = [c for c in ("path", "label") if c not in table.columns]
        if missing:
            raise DataError(f"a patch table needs columns path and label; missing {missing}")
        self.transform, self.dtype = transform, dtype
        self.resize = size is not None
        self.size = int(size) if size is not None else (image_size(table) if len(table) else 0)
        self._paths = table["path"].astype(str).to_numpy()
        names = table["label"].astype(str).to_numpy()
        self.classes = list(classes) if classes is not None else sorted(set(names.tolist()))
        self.label_index = {c: i for i, c in enumerate(self.classes)}
        self.labels = np.array([self.label_index.get(n, -1) for n in names], np.int64)

    def __len__(self) -> int:
        return len(self._paths)

    def read(self, index: int) -> np.ndarray:
        """The patch of row ``index`` as (H, W, 3) uint8 (resized when the dataset has a ``size``)."""
        from PIL import Image

        path = self._paths[index]
        try:
            with Image.open(path) as im:
                rgb = im.convert("RGB")
        except OSError as exc:
            raise DataError.at(path, f"not a readable image ({exc})") from exc
        if rgb.size != (self.size, self.size):
            if not self.resize:
                raise DataError.at(path, f"is {rgb.size[0]}x{rgb.size[1]} but the dataset's patches are "
                                         f"{self.size}x{self.size}; pass size= to resize")
            rgb = rgb.resize((self.size, self.size), Image.Resampling.BILINEAR)
        return np.asarray(rgb)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        n = len(self)
        index = int(index)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a PatchDataset of {n} patches")
        index %= n
        image = torch.from_numpy(np.array(self.read(index), copy=True)).permute(2, 0, 1).contiguous()
        if self.dtype == "float32":
            image = image.to(torch.float32).div_(255.0)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    def __repr__(self) -> str:
        return f"<PatchDataset {len(self)} patches of {self.size}², classes={self.classes}>"
