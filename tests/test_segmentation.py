"""Segmentation: the DeepLabV3 / U-Net models and their checkpoints, centre-level splits, the
``segment`` recipe (masks rasterised from annotations, Dice + CE, mIoU / Dice per class, balanced
sampling), and slide-level inference with ASAP XML + GeoJSON exports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from tests._traindata import make_cohort  # noqa: E402
from wsi_lab.annotations import AnnotationSet, LabelMap, Region, rasterize, read_annotations, write_asap  # noqa: E402
from wsi_lab.data.splits import check_no_leakage, split_by_group  # noqa: E402
from wsi_lab.errors import CheckpointError, DataError, InvalidParameterError, LeakageError  # noqa: E402
from wsi_lab.models import SegmentationModel, build_model, load, save_checkpoint  # noqa: E402
from wsi_lab.train.spec import JobSpec  # noqa: E402

CLASSES = ["background", "tumor"]


@pytest.mark.parametrize("cfg", [{"name": "unet", "base": 4, "depth": 2},
                                 {"name": "deeplabv3", "backbone": "mobilenet_v3_large"}])
def test_models_give_per_pixel_logits_and_rebuild_from_their_checkpoint(tmp_path, cfg):
    torch.manual_seed(0)
    model = build_model({**cfg, "classes": CLASSES, "input_size": 32})
    assert isinstance(model, SegmentationModel) and model.kind == "segmenter"
    x = torch.rand(2, 3, 32, 32)
    model.eval()
    y = model(x)
    assert y.shape == (2, 2, 32, 32)
    if cfg["name"] == "deeplabv3":  # torchvision's model, built without any weights (none downloaded)
        assert model.config["backbone"] == "mobilenet_v3_large" and model.config["mean"][0] == pytest.approx(0.485)
        return
    path = save_checkpoint(tmp_path / "m.pt", model, epoch=1)
    again = load(path)
    assert again.classes == CLASSES and torch.allclose(again(x), y, atol=1e-5)
    with pytest.raises(CheckpointError, match="input_size"):
        load(path, expect={"input_size": 64})


def test_local_backbone_weights_load_and_wrong_files_are_refused(tmp_path):
    import torchvision

    from wsi_lab.models import load_segmentation_weights

    imagenet = torchvision.models.mobilenet_v3_large(weights=None)  # stands in for a downloaded ImageNet file
    torch.save(imagenet.state_dict(), tmp_path / "mnv3.pth")
    model = build_model({"name": "deeplabv3", "classes": CLASSES})
    dropped = load_segmentation_weights(model, str(tmp_path / "mnv3.pth"))
    assert dropped and all(k.startswith("classifier.") for k in dropped)
    assert torch.equal(model.backbone.state_dict()["0.0.weight"], imagenet.state_dict()["features.0.0.weight"])
    unet = build_model({"name": "unet", "classes": CLASSES, "base": 4, "depth": 2})
    with pytest.raises(CheckpointError, match=r"mnv3\.pth.*unet"):
        load_segmentation_weights(unet, str(tmp_path / "mnv3.pth"))
    torch.save(unet.net.state_dict(), tmp_path / "unet.pt")
    other = build_model({"name": "unet", "classes": CLASSES, "base": 4, "depth": 2})
    assert load_segmentation_weights(other, str(tmp_path / "unet.pt")) == []
    assert torch.equal(other.net.head.weight, unet.net.head.weight)


def test_unet_takes_any_size_and_refuses_bad_options():
    model = build_model({"name": "unet", "classes": ["bg", "a", "b"], "base": 4, "depth": 3})
    assert model(torch.rand(1, 3, 37, 45)).shape == (1, 3, 37, 45)
    with pytest.raises(InvalidParameterError, match="unknown option"):
        build_model({"name": "unet", "classes": CLASSES, "width": 3})
    with pytest.raises(InvalidParameterError, match="backbone"):
        build_model({"name": "deeplabv3", "classes": CLASSES, "backbone": "vgg"})
    with pytest.raises(InvalidParameterError, match="at least 2 classes"):
        build_model({"name": "unet", "classes": ["bg"]})


def test_centre_splits_keep_every_centre_in_one_split():
    rows = [{"slide_id": f"c{c}_s{s}", "patient_id": f"c{c}_p{s // 2}", "centre": f"centre_{c}",
             "label": "tumor" if s % 2 else "normal"} for c in range(5) for s in range(4) for _ in range(3)]
    table = pd.DataFrame(rows)
    out = split_by_group(table, "centre", (0.6, 0.2, 0.2), seed=1)
    per = out.groupby("centre")["split"].nunique()
    assert (per == 1).all() and sorted(out.groupby("centre")["split"].first().value_counts().tolist()) == [1, 1, 3]
    assert out.attrs["wsi_lab"]["split"]["group"] == "centre"
    check_no_leakage(out, "centre")
    check_no_leakage(out)  # patients are nested in centres: no patient leaks either
    assert split_by_group(table, "centre", (0.6, 0.2, 0.2), seed=1)["split"].equals(out["split"])
    bad = out.copy()
    bad.loc[0, "split"] = "test" if bad.loc[0, "split"] != "test" else "train"
    with pytest.raises(LeakageError, match="centre leakage.*centre_0"):
        check_no_leakage(bad, "centre")
    with pytest.raises(DataError, match="2 centre.*cannot fill"):
        split_by_group(table[table["centre"].isin(["centre_0", "centre_1"])], "centre", (0.6, 0.2, 0.2))
    with pytest.raises(DataError, match="'hospital'"):
        split_by_group(table, "hospital")


def _annotated_cohort(tmp_path, fmt: str = "xml"):
    table = make_cohort(tmp_path / "data", slides=2, tile_size=32, read_size=64, width=384, height=192,
                        val_fraction=0.3, seed=2)
    ann = tmp_path / "ann"
    ann.mkdir()
    for sid in ("s0", "s1"):  # tumour in the left half, an exclusion inside it (CAMELYON16 groups)
        write_asap(ann / f"{sid}.xml", AnnotationSet([
            Region.of("_0", [(0, 0), (200, 0), (170, 192), (0, 192)], name="tumour"),
            Region.of("_2", [(60, 60), (124, 60), (124, 124), (60, 124)], name="exclusion")]))
    return table, ann


def test_segment_recipe_trains_and_writes_miou_and_dice(tmp_path, capsys):
    from wsi_lab.infer.segment import read_mask, segment_slides
    from wsi_lab.train.run import run_spec

    table, ann = _annotated_cohort(tmp_path)
    out = tmp_path / "job"
    spec = JobSpec(task="segment", table=str(table), out=str(out), annotations=str(ann), epochs=2, batch_size=6,
                   lr=5e-3, model={"name": "unet", "base": 4, "depth": 2},
                   sampler={"positive_fraction": 0.5, "threshold": 0.05}).validate()
    run_spec(spec)
    recs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if r["split"] == "train"]
    val = [r for r in recs if r["split"] == "val"]
    assert len(train) == len(val) == 2 and train[1]["loss"] < train[0]["loss"]
    for key in ("miou", "dice", "iou_background", "iou_tumor", "dice_tumor", "accuracy"):
        assert key in val[-1]
    assert 0 <= val[-1]["miou"] <= 1 and val[-1]["iou_background"] is not None
    model = load(out / "checkpoints" / "best.pt")
    assert isinstance(model, SegmentationModel) and model.classes == CLASSES

    from wsi_lab.data.table import read_table

    tiles = read_table(table)
    res = segment_slides(out / "checkpoints" / "last.pt", tiles, tmp_path / "seg", downsample=8)
    assert res.done == ["s0", "s1"] and {"pred_frac_background", "pred_frac_tumor"} <= set(res.table.columns)
    mask, meta = read_mask(tmp_path / "seg" / "s0")
    assert mask.shape == (24, 48) and meta["downsample"] == 8 and meta["classes"] == CLASSES
    assert {"regions.xml", "regions.geojson", "manifest.json"} <= {p.name for p in (tmp_path / "seg" / "s0").iterdir()}
    again = segment_slides(out / "checkpoints" / "last.pt", tiles, tmp_path / "seg", downsample=8)
    assert again.skipped == ["s0", "s1"] and np.allclose(again.table["pred_frac_tumor"], res.table["pred_frac_tumor"])
    from wsi_lab.cli import main

    capsys.readouterr()
    assert main(["segment", str(out / "checkpoints" / "last.pt"), str(table), "-o", str(tmp_path / "cli"),
                 "--formats", "geojson"]) == 0
    err = capsys.readouterr().err  # the progress bar and the per-slide lines, on stderr
    assert "s0: segmenting" in err and "s1: done" in err and f"{len(tiles)}/{len(tiles)} tiles" in err
    assert read_annotations(tmp_path / "cli" / "s1" / "regions.geojson") is not None
    assert not (tmp_path / "cli" / "s1" / "regions.xml").exists()


def test_segment_job_refuses_unknown_labels_and_missing_annotations(tmp_path):
    from wsi_lab.train.run import run_spec

    table, ann = _annotated_cohort(tmp_path)
    with pytest.raises(InvalidParameterError, match="'annotations'"):
        JobSpec(task="segment", table=str(table), out=str(tmp_path / "o")).validate()
    with pytest.raises(InvalidParameterError, match="'sampler'"):
        JobSpec(task="segment", table=str(table), out="o", annotations=str(ann), sampler={"ratio": 1}).validate()
    spec = JobSpec(task="segment", table=str(table), out=str(tmp_path / "o"), annotations=str(ann), epochs=1,
                   batch_size=4, model={"name": "unet", "base": 4, "depth": 2}, label_map={"_0": "tumor"})
    with pytest.raises(DataError, match=r"s0\.xml.*'exclusion'.*'_2'"):
        run_spec(spec.validate())
    (ann / "s1.xml").write_text((ann / "s1.xml").read_text().replace('X="200', 'X="9000'))
    with pytest.raises(DataError, match=r"s1\.xml.*'tumour'.*outside the 384x192 slide"):
        run_spec(spec.replace(label_map=None, out=str(tmp_path / "o2")).validate())


class _Tissue(torch.nn.Module):
    """A real (parameter-free) segmentation module: class 1 where a pixel is darker than 0.8."""

    kind = "segmenter"
    classes = ["background", "tissue"]
    input_size = 64

    def forward(self, x):
        dark = (x.mean(1, keepdim=True) < 0.8).float()
        return torch.cat([1 - dark, dark], 1) * 10


def test_slide_masks_are_stitched_in_place_and_regions_rasterise_back(tmp_path):
    from wsi_lab.infer.segment import read_mask, segment_slides
    from wsi_lab.testing import make_slide

    path = make_slide(tmp_path / "t.svs", 1024, 768, tile=256, tissue_fraction=0.4, seed=4, source="procedural",
                      associated=False)
    xs, ys = np.meshgrid(np.arange(0, 1024, 256), np.arange(0, 768, 256))
    table = pd.DataFrame({"slide_id": "t", "x": xs.ravel(), "y": ys.ravel(), "level": 0, "read_size": 256,
                          "tile_size": 64})
    table.attrs["wsi_lab"] = {"slides": {"t": {"path": str(path)}}}
    res = segment_slides(_Tissue(), table, tmp_path / "out", downsample=16, batch_size=4)
    mask, meta = read_mask(tmp_path / "out" / "t")
    assert mask.shape == (48, 64) and meta["classes"] == ["background", "tissue"]
    frac = res.table["pred_frac_tissue"].to_numpy()
    assert (frac > 0.5).any() and (frac < 0.05).any()  # white tiles and tissue tiles
    for (x, y), f in zip(zip(table["x"], table["y"]), frac):  # each tile's mask block holds its own prediction
        assert abs(mask[y // 16:(y + 256) // 16, x // 16:(x + 256) // 16].mean() - f) < 0.1
    lm = LabelMap.of({"tissue": "tissue"})
    for name in ("regions.xml", "regions.geojson"):
        back = rasterize(read_annotations(tmp_path / "out" / "t" / name), lm, size=(64, 48), downsample=16)
        assert np.array_equal(back, mask)
    with pytest.raises(CheckpointError, match="not a segmentation model"):
        segment_slides(build_model({"name": "small_cnn", "classes": ["a", "b"]}), table, tmp_path / "x")


def test_balanced_training_rows_for_classify_and_segment(tmp_path):
    from wsi_lab.data.table import read_table, write_table
    from wsi_lab.train.run import run_spec
    from wsi_lab.train.sampling import balanced_train_set

    path = make_cohort(tmp_path / "c", slides=2, tile_size=32, read_size=128, width=512, height=256, val_fraction=0.25)
    table = read_table(path)
    table["tumor_ratio"] = np.where(np.arange(len(table)) % 4 == 0, 0.9, 0.0)
    rows = np.flatnonzero(table["split"].to_numpy() == "train")
    spec = JobSpec(task="classify", table=str(path), out=str(tmp_path / "o"), epochs=1, batch_size=4,
                   sampler={"positive_fraction": 0.5, "threshold": 0.5})
    view, on_epoch = balanced_train_set(spec, list(range(len(table))), rows, table)
    first = [view[i] for i in range(len(view))]
    assert len(view) == len(rows) and set(first) <= set(rows.tolist())
    assert (table["tumor_ratio"].to_numpy()[first] > 0.5).sum() == round(len(rows) / 2)
    on_epoch(2)
    assert [view[i] for i in range(len(view))] != first
    with pytest.raises(DataError, match="'stroma_ratio'"):
        balanced_train_set(spec.replace(sampler={"column": "stroma_ratio"}), [], rows, table)
    with pytest.raises(InvalidParameterError, match="'sampler'.*not 'vae'"):
        JobSpec(task="vae", table="t", out="o", sampler={}).validate()
    write_table(table, path)
    run_spec(spec.validate())  # the classify recipe trains on the balanced rows
    assert (tmp_path / "o" / "checkpoints" / "last.pt").is_file()


def test_segment_reports_progress_per_slide_and_batch(tmp_path):
    from wsi_lab.infer.segment import segment_slides
    from wsi_lab.runs.progress import ItemStatus
    from wsi_lab.testing import make_slide

    rows, slides = [], {}
    for sid in ("a", "b"):
        slides[sid] = {"path": str(make_slide(tmp_path / f"{sid}.svs", 512, 256, tile=256, tissue_fraction=0.5, seed=1,
                                              source="procedural", associated=False))}
        rows += [{"slide_id": sid, "x": x, "y": y, "level": 0, "read_size": 128, "tile_size": 32}
                 for y in range(0, 256, 128) for x in range(0, 512, 128)]
    table = pd.DataFrame(rows)
    table.attrs["wsi_lab"] = {"slides": slides}
    events = []
    segment_slides(_Tissue(), table, tmp_path / "out", downsample=16, batch_size=3, progress=events.append)
    last = events[-1]
    assert last.finished and last.unit == "tiles" and last.done == last.total == len(table) == 16
    assert last.items == {"a": ItemStatus.DONE, "b": ItemStatus.DONE}
    assert last.metrics["tiles"] == 16 and last.metrics["tiles_per_s"] > 0
    assert [e.current for e in events if e.message.endswith("segmenting")] == ["a", "b"]
    batches = [e.done for e in events if not e.message]  # one event per batch of 3 tiles: 3 + 3 + 2 per slide
    assert batches == [3, 6, 8, 11, 14, 16]
    events.clear()
    segment_slides(_Tissue(), table, tmp_path / "out", downsample=16, batch_size=3, progress=events.append)
    assert events[-1].items == {"a": ItemStatus.SKIPPED, "b": ItemStatus.SKIPPED} and events[-1].done == 16
    Path(slides["b"]["path"]).unlink()
    events.clear()
    with pytest.raises(DataError, match="'b'.*missing"):
        segment_slides(_Tissue(), table, tmp_path / "out2", downsample=16, progress=events.append)
    assert events[-1].finished and events[-1].items["a"] == ItemStatus.DONE and events[-1].failed == 1
