"""The torch TileDataset over real slides, with DataLoader worker processes."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest

from tests._datatables import concat, grid_table
from wsi_lab.data.tile_reader import read_tile
from wsi_lab.errors import DataError, InvalidParameterError
from wsi_lab.slide import open_slide

torch = pytest.importorskip("torch")
from wsi_lab.data.dataset import TileDataset  # noqa: E402


@pytest.fixture(scope="module")
def table():
    from tests.conftest import CMU, NDPI

    if not CMU.exists():
        pytest.skip("CMU slide missing")
    parts = [grid_table(CMU, "cmu", read_size=256, tile_size=64, limit=10)]
    if NDPI.exists():
        parts.append(grid_table(NDPI, "ndpi", level=1, read_size=128, tile_size=64, limit=6))
    t = concat(parts)
    t["label"] = np.where(t["slide_id"] == "cmu", "tumor", "normal")
    return t


def _expected(table, i):
    r = table.iloc[i]
    with open_slide(table.attrs["wsi_lab"]["slides"][r.slide_id]["path"]) as s:
        return read_tile(s, r.x, r.y, r.level, r.read_size, r.tile_size)


def test_items_match_direct_reads(table):
    ds = TileDataset(table)
    assert len(ds) == len(table) and ds.classes == ["normal", "tumor"]
    img, label = ds[3]
    assert img.dtype == torch.float32 and tuple(img.shape) == (3, 64, 64)
    assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    assert label == 1
    assert np.array_equal((img * 255).round().to(torch.uint8).permute(1, 2, 0).numpy(), _expected(table, 3))
    u8, _ = TileDataset(table, dtype="uint8")[-1]
    assert u8.dtype == torch.uint8 and np.array_equal(u8.permute(1, 2, 0).numpy(), _expected(table, len(table) - 1))
    with pytest.raises(IndexError):
        ds[len(ds)]
    with pytest.raises(InvalidParameterError):
        TileDataset(table, dtype="float16")


def test_transform_labels_and_paths(table):
    flipped, _ = TileDataset(table, transform=lambda t: t.flip(-1))[0]
    plain, _ = TileDataset(table)[0]
    assert torch.equal(flipped, plain.flip(-1))
    unlabelled = table.drop(columns=["label"])
    assert TileDataset(unlabelled)[0][1] == -1
    bare = table.copy()
    bare.attrs = {}
    with pytest.raises(DataError, match="slide_paths"):
        TileDataset(bare)
    ds = TileDataset(bare, slide_paths={k: v["path"] for k, v in table.attrs["wsi_lab"]["slides"].items()})
    assert ds[0][0].shape == (3, 64, 64)


def test_lru_of_open_slides(table):
    ds = TileDataset(table, cache_size=1)
    ds[0]
    assert ds.open_slides == 1
    ds[len(ds) - 1]  # other slide: the first one is closed
    assert ds.open_slides == 1
    ds.close()
    assert ds.open_slides == 0


def test_dataloader_two_workers_after_parent_opened_slides(table):
    ds = TileDataset(table)
    ds[0]  # the parent has an open slide: workers must not reuse its handle
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.open_slides == 0 and torch.equal(clone[5][0], ds[5][0])
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, shuffle=False)
    images, labels = zip(*loader)
    images, labels = torch.cat(images), torch.cat(labels)
    assert images.shape == (len(table), 3, 64, 64)
    assert labels.tolist() == [1 if s == "cmu" else 0 for s in table["slide_id"]]
    for i in (0, 7, len(table) - 1):
        assert torch.equal(images[i], ds[i][0])


def test_import_wsi_lab_data_does_not_import_torch():
    code = ("import sys, wsi_lab, wsi_lab.data; assert 'torch' not in sys.modules, 'torch imported'; "
            "cls = wsi_lab.data.TileDataset; assert 'torch' in sys.modules; print(cls.__name__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "TileDataset", proc.stderr[-2000:]
