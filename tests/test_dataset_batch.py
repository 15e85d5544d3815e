"""Batch reads of TileDataset (each source tile decoded once), collate_tiles and the locality sampler,
on the real CMU slide and generated slides."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from wsi_lab.data.fast_loader import LocalitySampler
from wsi_lab.data.tile_reader import read_tile
from wsi_lab.errors import InvalidParameterError
from wsi_lab.slide import open_slide

torch = pytest.importorskip("torch")
from wsi_lab.data.dataset import TileDataset, collate_tiles, locality_sampler, tile_loader  # noqa: E402


def _table(rows: list[tuple], paths: dict[str, str]) -> pd.DataFrame:
    t = pd.DataFrame(rows, columns=["slide_id", "x", "y", "level", "read_size", "tile_size"])
    t["label"] = np.where(t["x"] % 2 == 0, "even", "odd")
    t.attrs["wsi_lab"] = {"slides": {k: {"path": v} for k, v in paths.items()}}
    return t


@pytest.fixture(scope="module")
def mixed(cmu_path, tmp_path_factory):
    """Rows of every kind on CMU (240² JPEG tiles): exactly one source tile, inside one, straddling two
    and four, resized (down and up), past the slide's edge; plus a generated slide of 256² tiles."""
    from wsi_lab.testing import make_slide

    gen = make_slide(tmp_path_factory.mktemp("gen") / "g.svs", 512, 512, tile=256, seed=3, source="procedural",
                     associated=False)
    w, h = 2220, 2967
    rows = [("cmu", 240, 480, 0, 64, 64), ("cmu", 0, 240, 0, 240, 64), ("cmu", 10, 20, 0, 64, 64),
            ("cmu", 200, 10, 0, 64, 64), ("cmu", 220, 225, 0, 64, 64), ("cmu", 300, 300, 0, 256, 64),
            ("cmu", 500, 700, 0, 32, 64), ("cmu", w - 40, h - 30, 0, 64, 64), ("cmu", 481, 1, 0, 64, 64),
            ("g", 250, 250, 0, 64, 64), ("g", 0, 0, 1, 64, 64), ("g", 100, 100, 0, 128, 64), ("cmu", 241, 481, 0, 64, 64)]
    return _table(rows, {"cmu": str(cmu_path), "g": str(gen)})


def test_batch_reads_equal_per_tile_reads(mixed):
    ds = TileDataset(mixed, dtype="uint8")
    batch = ds.read_batch(range(len(ds)))
    assert batch.shape == (len(mixed), 64, 64, 3) and batch.dtype == np.uint8
    for i, r in enumerate(mixed.itertuples()):
        with open_slide(mixed.attrs["wsi_lab"]["slides"][r.slide_id]["path"]) as s:
            assert np.array_equal(batch[i], read_tile(s, r.x, r.y, r.level, r.read_size, r.tile_size)), r
    exact = TileDataset(_table([("cmu", 480, 240, 0, 240, 240)], {"cmu": mixed.attrs["wsi_lab"]["slides"]["cmu"]["path"]}))
    with open_slide(mixed.attrs["wsi_lab"]["slides"]["cmu"]["path"]) as s:  # a whole source tile, as stored
        assert np.array_equal(exact.read_batch([0])[0], s.read_region((480, 240), 0, (240, 240)))
    some = [5, 0, 5, -1]
    assert np.array_equal(ds.read_batch(some), batch[[5, 0, 5, len(ds) - 1]])  # any order, repeats, negatives
    with pytest.raises(IndexError):
        ds.read_batch([len(ds)])


def test_batch_reads_survive_the_slide_lru_closing_slides(mixed):
    ds = TileDataset(mixed, dtype="uint8", cache_size=1)  # every switch of slide closes the other one
    cmu = np.flatnonzero(mixed.slide_id == "cmu")
    gen = np.flatnonzero(mixed.slide_id == "g")
    first = ds.read_batch(cmu)
    ds._batch._tiles.clear()  # decode again: through the reopened slide, not the closed one
    ds.read_batch(gen)
    assert np.array_equal(ds.read_batch(cmu), first)
    path = mixed.attrs["wsi_lab"]["slides"]["cmu"]["path"]
    assert ds._batch._grids[(path, 0)][0] is ds._cache.get(path)  # decodes through the open slide's descriptor
    ds.close()


def test_getitems_and_collate_tiles_match_items(mixed):
    ds = TileDataset(mixed)
    items = ds.__getitems__([3, 1, 4])
    imgs, labels = collate_tiles(items)
    assert imgs.shape == (3, 3, 64, 64) and imgs.dtype == torch.float32
    for k, i in enumerate([3, 1, 4]):
        img, lab = ds[i]
        assert torch.equal(imgs[k], img) and labels[k].item() == lab and torch.equal(items[k][0], img)
    stacked = torch.utils.data.default_collate(items)  # any collate_fn still works on the items
    assert torch.equal(stacked[0], imgs)
    flipped = TileDataset(mixed, transform=lambda t: t.flip(-1))
    assert torch.equal(collate_tiles(flipped.__getitems__([2]))[0][0], ds[2][0].flip(-1))


def test_tile_loader_two_workers_covers_every_row_once(mixed):
    ds = TileDataset(mixed[mixed.slide_id == "cmu"].reset_index(drop=True), dtype="uint8")
    loader = tile_loader(ds, batch_size=4, shuffle=True, seed=1, num_workers=2)
    seen_images, seen = [], []
    for images, _labels in loader:
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, 64, 64)
        seen_images.append(images)
    assert loader.batch_sampler is not None
    order = [i for b in loader.batch_sampler for i in b]  # the delivered order
    images = torch.cat(seen_images)
    assert sorted(order) == list(range(len(ds)))
    for k, i in enumerate(order):
        seen.append(torch.equal(images[k], ds[i][0]))
    assert all(seen)


def test_locality_sampler_shuffles_groups_and_shards_like_distributed_sampler():
    groups = np.repeat(np.arange(20), 7)[np.random.default_rng(0).permutation(140)]
    s = LocalitySampler(groups, seed=3, window=2)
    a = list(s)
    assert sorted(a) == list(range(140)) and a == list(LocalitySampler(groups, seed=3, window=2))
    s.set_epoch(1)
    assert list(s) != a and sorted(s) == list(range(140))
    for w in range(0, 140, 14):  # each run of two groups' worth of rows comes from two groups
        assert len(set(groups[a[w:w + 14]])) == 2
    from wsi_lab.data.fast_loader import WorkerBatches

    batches = list(WorkerBatches(LocalitySampler(groups, seed=3, window=2), 10, num_workers=2))
    assert [len(b) for b in batches] == [10] * 14 and sum(batches, []) != a and sorted(sum(batches, [])) == sorted(a)
    assert batches[0::2] + batches[1::2] == [a[i:i + 10] for i in range(0, 140, 10)]  # one stretch per worker
    # areas: windows of 2 groups from 2 streams; the next window takes each stream's next group, and within
    # an area of 4 consecutive ids the groups follow each other
    arr = LocalitySampler(groups, seed=3, window=2, area=4).order()
    wins = [sorted(set(groups[arr[w:w + 14]].tolist())) for w in range(0, 140, 14)]
    assert all(len(x) == 2 for x in wins) and sorted(sum(wins, [])) == list(range(20))
    assert all(len({g // 4 for g in x}) == 2 for x in wins)  # a window mixes two areas
    steps = [min(abs(a - b) for a in x for b in y) for x, y in zip(wins, wins[1:])]
    assert sum(s == 1 for s in steps) >= 6  # mostly each stream's next group (not so with area=1)
    free = LocalitySampler(groups, seed=3, window=2, area=1).order()
    assert sorted(free.tolist()) == list(range(140)) and not np.array_equal(free, arr)
    with pytest.raises(InvalidParameterError):
        LocalitySampler(groups, area=0)
    plain = LocalitySampler(groups, shuffle=False)
    assert [groups[i] for i in plain] == sorted(groups.tolist())
    parts = [list(LocalitySampler(groups[:137], seed=3, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(parts[0]) == len(parts[1]) == 69
    full = LocalitySampler(groups[:137], seed=3).order()
    merged = [x for pair in zip(*parts) for x in pair]
    assert merged[:137] == full.tolist() and merged[137] == full[0]  # padded with the first index
    with pytest.raises(InvalidParameterError):
        LocalitySampler(groups, num_replicas=2, rank=2)


def test_source_groups_follow_the_slide_tile_grid(cmu_path):
    xs, ys = np.meshgrid(np.arange(0, 960, 64), np.arange(0, 480, 64))
    t = _table([("cmu", int(x), int(y), 0, 64, 64) for x, y in zip(xs.ravel(), ys.ravel())], {"cmu": str(cmu_path)})
    ds = TileDataset(t)
    g = ds.source_groups()
    # blocks of 2 x 2 source tiles of 240 px: rows by their top-left corner; ids in Hilbert order
    by, bx = (t["y"] // 480).to_numpy(), (t["x"] // 480).to_numpy()
    expect = np.unique(np.stack([by, bx], 1), axis=0, return_inverse=True)[1].ravel()
    assert len(np.unique(np.stack([g, expect], 1), axis=0)) == len(set(g)) == len(set(expect))  # same blocks
    cells = {int(k): (int(by[g == k][0]), int(bx[g == k][0])) for k in set(g)}
    for k in range(len(cells) - 1):  # consecutive ids are neighbouring blocks
        assert abs(cells[k][0] - cells[k + 1][0]) + abs(cells[k][1] - cells[k + 1][1]) == 1
    sub = torch.utils.data.Subset(ds, list(range(0, len(ds), 2)))
    sampler = locality_sampler(sub, seed=0)
    assert sorted(sampler) == list(range(len(sub)))
    with pytest.raises(InvalidParameterError, match="TileDataset"):
        locality_sampler(torch.utils.data.TensorDataset(torch.zeros(3)))


def test_a_job_with_the_locality_sampler_trains_and_is_reproducible(tmp_path):
    import json

    from tests._traindata import make_cohort
    from wsi_lab.train import JobSpec
    from wsi_lab.train.run import run_spec

    table = make_cohort(tmp_path / "c", slides=2, tile_size=32, read_size=64, width=512, height=256)
    losses = []
    for name in ("a", "b"):
        spec = JobSpec(task="classify", table=str(table), out=str(tmp_path / name), model="small_cnn", epochs=1,
                       batch_size=16, data={"sampler": "locality"}).validate()
        run_spec(spec)
        recs = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        assert recs[0]["split"] == "train" and recs[0]["tiles"] + recs[1]["tiles"] == 64  # every tile once
        losses.append([r["loss"] for r in recs])
    assert losses[0] == losses[1]
    with pytest.raises(InvalidParameterError, match="sampler 'locality'"):
        JobSpec(task="classify", table=str(tmp_path), out=str(tmp_path / "x"),
                data={"sampler": "locality", "format": "folder"}).validate()


def test_float_batches_from_workers_equal_items_and_torch_division(mixed):
    from wsi_lab.data.dataset import _new_tensor

    every = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16, 1).expand(1, 16, 16, 3).contiguous()
    ours = _new_tensor((1, 16, 16, 3), torch.float32, shared=True)  # the worker path: shared memory
    np.divide(every.numpy(), np.float32(255.0), out=ours.numpy(), dtype=np.float32)
    assert ours.is_shared() and torch.equal(ours, every.to(torch.float32).div_(255.0))  # all 256 values
    ds = TileDataset(mixed[mixed.slide_id == "cmu"].reset_index(drop=True))
    loader = tile_loader(ds, batch_size=3, shuffle=True, seed=2, num_workers=2)
    images = torch.cat([x for x, _ in loader])
    assert loader.batch_sampler is not None
    order = [i for b in loader.batch_sampler for i in b]
    assert images.dtype == torch.float32 and len(order) == len(ds)
    assert all(torch.equal(images[k], ds[i][0]) for k, i in enumerate(order))


def test_source_groups_of_large_tiles_span_several_rows(cmu_path):
    # 224² rows on 240² source tiles: a block of 2 x 2 tiles would hold ~4 rows, and rows crossing its
    # border decode the neighbour's tiles again; blocks are ceil(7 * 224 / 240) = 7 tiles (1680 px) instead
    xs, ys = np.meshgrid(np.arange(0, 2000, 224), np.arange(0, 2700, 224))
    t = _table([("cmu", int(x), int(y), 0, 224, 224) for x, y in zip(xs.ravel(), ys.ravel())], {"cmu": str(cmu_path)})
    g = TileDataset(t).source_groups()
    expect = np.unique(np.stack([t["y"] // 1680, t["x"] // 1680], 1), axis=0, return_inverse=True)[1].ravel()
    assert len(np.unique(np.stack([g, expect], 1), axis=0)) == len(np.unique(g)) == 4  # the same 4 blocks


def test_the_tile_lru_stays_within_its_bytes(mixed):
    from wsi_lab.data.fast_loader import BatchReader

    ds = TileDataset(mixed, dtype="uint8")
    small = BatchReader(ds._slide_ids, ds._geom, ds.slide_paths, ds._cache, tile_cache_bytes=3 * 240 * 240 * 3)
    assert np.array_equal(small.read_batch(np.arange(len(ds))), ds.read_batch(range(len(ds))))
    assert 1 <= len(small._tiles) <= 3 and small._tiles.nbytes <= 3 * 240 * 240 * 3
    out = np.zeros((2, 64, 64, 3), np.uint8)
    assert small.read_batch([0, 1], out=out) is out and np.array_equal(out, ds.read_batch([0, 1]))
    with pytest.raises(InvalidParameterError, match="out must be"):
        small.read_batch([0, 1], out=np.zeros((3, 64, 64, 3), np.uint8))


def test_dropped_tiles_are_decoded_into_again_without_changing_pixels(mixed):
    from wsi_lab.data.fast_loader import BatchReader

    ds = TileDataset(mixed, dtype="uint8")
    expect = ds.read_batch(range(len(ds)))
    # one tile held at a time: every miss decodes into the array of the tile just dropped, also between the
    # up-to-four tiles of one straddling row
    one = BatchReader(ds._slide_ids, ds._geom, ds.slide_paths, ds._cache, tile_cache_bytes=1)
    spare_ids: set[int] = set()
    for _ in range(2):
        assert np.array_equal(one.read_batch(np.arange(len(ds))), expect)
        spare_ids |= {id(a) for a in one._tiles._spare}
    assert len(one._tiles) == 1 and spare_ids  # buffers were recycled
    assert np.array_equal(one.read_batch(np.arange(len(ds))[::-1]), expect[::-1])
