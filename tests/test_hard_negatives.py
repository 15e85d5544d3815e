"""Hard-negative mining in the segment recipe's balanced sampler (``sampler.hard_negatives``): the
negatives drawn are the ones the model scores worst, the positives' share is kept, every step is
recorded, and bad options are refused with the key named."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from tests._traindata import make_cohort  # noqa: E402
from wsi_lab.annotations import AnnotationSet, Region, write_asap  # noqa: E402
from wsi_lab.errors import InvalidParameterError  # noqa: E402
from wsi_lab.train.spec import JobSpec  # noqa: E402


def _cohort(tmp_path):
    table = make_cohort(tmp_path / "data", slides=2, tile_size=32, read_size=64, width=384, height=192,
                        val_fraction=0.3, seed=2)
    ann = tmp_path / "ann"
    ann.mkdir()
    for sid in ("s0", "s1"):  # tumour in the left third: most tiles are negatives
        write_asap(ann / f"{sid}.xml", AnnotationSet([Region.of("_0", [(0, 0), (130, 0), (130, 192), (0, 192)])]))
    return table, ann


def _negative_losses(spec, model) -> tuple[np.ndarray, np.ndarray, int]:
    """``(rows, mean pixel CE)`` of every negative training tile under ``model``, computed here with the
    recipe's own data pieces, and the number of training tiles."""
    from torch.nn import functional as F

    from wsi_lab.annotations import LabelMap, annotations_by_slide, tile_class_fractions
    from wsi_lab.train.data import job_data
    from wsi_lab.train.recipe_segment import SegmentationTiles, slide_geometry

    data = job_data(spec, labelled=False)
    geometry = slide_geometry(data.table)
    annotations = annotations_by_slide(spec.annotations, sorted(geometry))
    label_map = LabelMap.of(None, sorted({lab for a in annotations.values() if a for lab in a.labels}))
    ratios = tile_class_fractions(data.table, annotations, label_map,
                                  downsamples={s: g["downsamples"] for s, g in geometry.items()})["tumor_ratio"]
    base = SegmentationTiles(data.table, annotations, label_map, geometry)
    rows = np.array([r for r in data.train if ratios.iloc[r] <= spec.sampler["threshold"]])
    model.eval()
    with torch.no_grad():
        losses = [float(F.cross_entropy(model(base[int(r)][0][None]), base[int(r)][1][None]).item()) for r in rows]
    return rows, np.array(losses), len(data.train)


def test_mining_draws_the_highest_loss_negatives_and_records_them(tmp_path):
    from wsi_lab.models import load
    from wsi_lab.train.run import run_spec

    table, ann = _cohort(tmp_path)
    out = tmp_path / "job"
    sampler = {"positive_fraction": 0.5, "threshold": 0.05, "hard_negatives": {"fraction": 0.5, "start_epoch": 1}}
    spec = JobSpec(task="segment", table=str(table), out=str(out), annotations=str(ann), epochs=1, batch_size=6,
                   lr=5e-3, seed=4, model={"name": "unet", "base": 4, "depth": 2}, sampler=sampler).validate()
    run_spec(spec)
    assert not (out / "hard_negatives").exists()  # mining starts after epoch 1
    # the model after epoch 1, scored here on every negative training tile
    rows, losses, n_train = _negative_losses(spec, load(out / "checkpoints" / "last.pt"))
    run_spec(spec.with_changes(epochs=2))  # resumes from that model: epoch 2 draws hard negatives
    mined = json.loads((out / "hard_negatives" / "epoch-0002.json").read_text())
    negative_slots = n_train - round(0.5 * n_train)
    k = round(0.5 * negative_slots)
    assert len(mined["rows"]) == k and mined["pool"] == len(rows) and len(rows) > k
    hardest = rows[np.lexsort((rows, -losses))[:k]]
    assert mined["rows"] == hardest.tolist()  # the highest-loss negatives, not a random pick
    assert mined["loss"] == pytest.approx(np.sort(losses)[::-1][:k].tolist(), rel=1e-4, abs=1e-6)
    recs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    hn = [r for r in recs if r["split"] == "hard_negatives"]
    assert [(r["epoch"], r["tiles"], r["pool"]) for r in hn] == [(2, k, len(rows))]
    assert hn[0]["loss"] > hn[0]["pool_loss"] and 0 <= hn[0]["fp_rate"] <= 1
    assert [(r["epoch"], r["split"]) for r in recs if r["split"] != "hard_negatives"] == \
        [(1, "train"), (1, "val"), (2, "train"), (2, "val")]


def test_hard_negatives_fill_negative_slots_only_and_are_reproducible():
    from wsi_lab.train.sampling import fill_hard_negatives

    order = np.arange(100, 120)
    negative = np.arange(20) % 2 == 0
    hard = np.array([7, 8, 9])
    a = fill_hard_negatives(order, negative, hard, seed=1, epoch=3)
    assert np.array_equal(a[~negative], order[~negative])  # the positives keep their places
    assert sorted(set(a[negative]) & {7, 8, 9}) == [7, 8, 9] and (a != order).sum() == 3
    assert np.array_equal(a, fill_hard_negatives(order, negative, hard, seed=1, epoch=3))
    assert not np.array_equal(a, fill_hard_negatives(order, negative, hard, seed=1, epoch=4))


@pytest.mark.parametrize("hard, match", [
    ({"fraction": 0}, "fraction"), ({"fraction": 1.5}, "fraction"), ({"fraction": True}, "fraction"),
    ({"start_epoch": 0}, "start_epoch"), ({"start_epoch": 1.5}, "start_epoch"), ({"pool": 0}, "pool"),
    ({"pool": "all"}, "pool"), ({"hardest": 3}, "unknown option"), (0.25, "mapping")])
def test_bad_hard_negative_options_are_refused(tmp_path, hard, match):
    with pytest.raises(InvalidParameterError, match=f"'sampler': hard_negatives.*{match}"):
        JobSpec(task="segment", table="t", out="o", annotations="a", sampler={"hard_negatives": hard}).validate()


def test_hard_negatives_are_for_segmentation():
    with pytest.raises(InvalidParameterError, match="task segment, not 'classify'"):
        JobSpec(task="classify", table="t", out="o", sampler={"hard_negatives": {}}).validate()
    spec = JobSpec(task="segment", table="t", out="o", annotations="a",
                   sampler={"hard_negatives": {"fraction": 0.5, "pool": 8}}).validate()
    assert spec.sampler["hard_negatives"] == {"fraction": 0.5, "pool": 8}


def test_a_pool_scores_a_seeded_subset_of_the_negatives():
    from wsi_lab.train.dist import DistContext
    from wsi_lab.train.mining import HardNegativeMiner

    spec = JobSpec(task="segment", table="t", out="o", annotations="a", seed=3)
    miner = HardNegativeMiner(None, np.arange(50, 0, -1), None, DistContext(), spec,
                              {"fraction": 0.5, "start_epoch": 2, "pool": 10})
    a = miner.pool_rows(3)
    assert len(a) == 10 and len(set(a)) == 10 and set(a) <= set(range(1, 51)) and list(a) == sorted(a)
    assert np.array_equal(a, miner.pool_rows(3)) and not np.array_equal(a, miner.pool_rows(4))
    assert [miner.active(e) for e in (1, 2, 3)] == [False, False, True]


def test_mining_under_ddp_scores_each_rank_share_and_draws_the_hardest(tmp_path):
    """torchrun, 2 processes: each rank scores every other negative and all ranks get all the scores; the
    rows drawn are the highest-loss ones under the model the job resumed from (scored here)."""
    from wsi_lab.models import load
    from wsi_lab.runs import JobStatus
    from wsi_lab.train import launch

    table, ann = _cohort(tmp_path)
    out = tmp_path / "ddp"
    sampler = {"positive_fraction": 0.5, "threshold": 0.05, "hard_negatives": {"fraction": 0.5, "start_epoch": 1}}
    spec = JobSpec(task="segment", table=str(table), out=str(out), annotations=str(ann), epochs=1, batch_size=6,
                   lr=5e-3, seed=4, model={"name": "unet", "base": 4, "depth": 2}, sampler=sampler,
                   backend="torchrun", nproc=2).validate()
    job = launch(spec)
    assert job.wait(400) == JobStatus.DONE, "\n".join(job.logs(tail=40))
    rows, losses, _ = _negative_losses(spec, load(out / "checkpoints" / "last.pt"))
    job = launch(spec.with_changes(epochs=2))
    assert job.wait(400) == JobStatus.DONE, "\n".join(job.logs(tail=40))
    mined = json.loads((out / "hard_negatives" / "epoch-0002.json").read_text())
    k = len(mined["rows"])
    assert k > 0 and mined["pool"] == len(rows)
    assert mined["rows"] == rows[np.lexsort((rows, -losses))[:k]].tolist()
    assert mined["loss"] == pytest.approx(np.sort(losses)[::-1][:k].tolist(), rel=1e-4, abs=1e-6)
    assert sum(json.loads(ln)["split"] == "hard_negatives" for ln in (out / "metrics.jsonl").read_text().splitlines()) == 1
