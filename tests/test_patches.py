"""Folder and CSV patch datasets: the patch table, PatchDataset's items, typed refusals, and a classify
job trained from a folder through the JobSpec's data block."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsi_lab.data.patches import patch_table, read_patch_csv, scan_folder
from wsi_lab.errors import DataError, InvalidParameterError
from wsi_lab.train import JobSpec

torch = pytest.importorskip("torch")
from wsi_lab.data.patch_dataset import PatchDataset  # noqa: E402


def _patch(path: Path, value: int, size: int = 32, fmt: str = "PNG") -> Path:
    rng = np.random.default_rng(value)
    arr = np.clip(rng.normal(value, 20, (size, size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, fmt)
    return path


def _tree(root: Path, per_class: int = 12, splits: bool = False) -> Path:
    for cls, value in (("dark", 60), ("light", 200)):
        for i in range(per_class):
            split = ("train" if i < per_class * 3 // 4 else "val") if splits else None
            folder = root / split / cls if split else root / cls
            _patch(folder / f"{cls}_{i}.png", value + i)
    return root


def test_folder_tree_gives_the_tile_dataset_contract(tmp_path):
    table = scan_folder(_tree(tmp_path / "flat", per_class=3))
    assert list(table.columns) == ["path", "label", "patient_id"] and len(table) == 6
    ds = PatchDataset(table)
    img, label = ds[0]
    assert img.dtype == torch.float32 and tuple(img.shape) == (3, 32, 32) and 0 <= float(img.min()) <= 1
    assert ds.classes == ["dark", "light"] and label == 0 and ds[-1][1] == 1
    u8, _ = PatchDataset(table, dtype="uint8")[1]
    expect = np.asarray(Image.open(table.path[1]).convert("RGB"))
    assert u8.dtype == torch.uint8 and np.array_equal(u8.permute(1, 2, 0).numpy(), expect)
    assert PatchDataset(table, size=16)[0][0].shape == (3, 16, 16)
    images, labels = next(iter(torch.utils.data.DataLoader(ds, batch_size=6, num_workers=2)))
    assert images.shape == (6, 3, 32, 32) and labels.tolist() == [0, 0, 0, 1, 1, 1]
    split = scan_folder(_tree(tmp_path / "split", per_class=4, splits=True))
    assert sorted(split["split"].unique()) == ["train", "val"] and len(split) == 8


def test_csv_with_relative_paths_patients_and_splits(tmp_path):
    for i in range(4):
        _patch(tmp_path / "images" / f"p{i}.jpg", 50 + 40 * i, fmt="JPEG")
    csv = tmp_path / "annotations.csv"
    csv.write_text("Image Name,Majority Vote Label,Partition,patient\n"
                   + "".join(f"p{i}.jpg,{'HP' if i % 2 else 'SSA'},{'train' if i < 3 else 'test'},pt{i // 2}\n"
                             for i in range(4)))
    table = read_patch_csv(csv, root=tmp_path / "images")
    assert table["label"].tolist() == ["SSA", "HP", "SSA", "HP"] and table["patient_id"].tolist()[2] == "pt1"
    assert table["split"].tolist() == ["train", "train", "train", "test"]
    assert PatchDataset(table).classes == ["HP", "SSA"]
    plain = tmp_path / "plain.csv"
    plain.write_text("path,label\nimages/p0.jpg,a\nimages/p1.jpg,b\n")
    assert patch_table(plain)["patient_id"].tolist() == ["p0", "p1"]


def test_bad_patch_sources_are_refused_with_the_file_named(tmp_path):
    with pytest.raises(DataError, match="not found") as exc:
        scan_folder(tmp_path / "nowhere")
    assert exc.value.file == tmp_path / "nowhere"
    root = _tree(tmp_path / "t", per_class=2)
    (root / "empty").mkdir()
    with pytest.raises(DataError, match="'empty' holds no images"):
        scan_folder(root)
    csv = tmp_path / "a.csv"
    csv.write_text("path,label\nt/dark/dark_0.png,dark\nt/dark/gone.png,dark\n")
    with pytest.raises(DataError, match="1 listed patch file.*gone.png"):
        read_patch_csv(csv)
    csv.write_text("file,label\nt/dark/dark_0.png,\n")
    with pytest.raises(DataError, match="without a label"):
        read_patch_csv(csv)
    csv.write_text("name,kind\nx,y\n")
    with pytest.raises(DataError, match="path and a label column"):
        read_patch_csv(csv)
    _patch(tmp_path / "mixed" / "a" / "big.png", 10, size=48)
    _patch(tmp_path / "mixed" / "a" / "small.png", 10, size=32)
    with pytest.raises(DataError, match="different sizes"):
        PatchDataset(scan_folder(tmp_path / "mixed"))
    with pytest.raises(InvalidParameterError, match="format 'folder'"):
        JobSpec(task="mil", table=str(root), out=str(tmp_path / "o"), features="f", data={"format": "folder"}).validate()
    with pytest.raises(InvalidParameterError, match="unknown option"):
        JobSpec(task="classify", table=str(root), out=str(tmp_path / "o"), data={"fromat": "folder"}).validate()


def test_classify_job_trains_from_a_folder_of_patches(tmp_path, capsys):
    from wsi_lab.models import load
    from wsi_lab.train.run import run_spec

    root = _tree(tmp_path / "patches", per_class=12)
    spec = JobSpec(task="classify", table=str(root), out=str(tmp_path / "run"), model="small_cnn", epochs=1,
                   batch_size=8, lr=1e-3, data={"format": "folder", "val_fraction": 0.25}).validate()
    assert JobSpec.from_json(spec.to_json()) == spec
    run_spec(spec)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["split"]) for r in records] == [(1, "train"), (1, "val")]
    assert records[1]["tiles"] == 6 and "accuracy" in records[1]  # 25 % of 24 patients held out
    assert "Validation Accuracy:" in capsys.readouterr().out
    model = load(tmp_path / "run" / "checkpoints" / "last.pt")
    assert model.classes == ["dark", "light"]
    single = _tree(tmp_path / "one", per_class=2)
    for f in (single / "light").iterdir():
        f.unlink()
    (single / "light").rmdir()
    with pytest.raises(DataError, match="1 class"):
        run_spec(spec.replace(table=str(single), out=str(tmp_path / "r2")))
