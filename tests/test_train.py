"""The training entry point and recipes on generated slides (CPU, tiny sizes): what a job writes,
resume without repeated epochs, same seed → same numbers, features → MIL, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("sklearn")

from tests._traindata import make_cohort  # noqa: E402
from wsi_lab.errors import CheckpointError, DataError, InvalidParameterError, TrainingError  # noqa: E402
from wsi_lab.models import load, save_checkpoint  # noqa: E402
from wsi_lab.models.vae import VAE  # noqa: E402
from wsi_lab.train.features import read_features  # noqa: E402
from wsi_lab.train.run import run_spec  # noqa: E402
from wsi_lab.train.spec import JobSpec  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY_VIT = {"depth": 1, "embed_dim": 48, "num_heads": 2, "input_size": 28}


@pytest.fixture(scope="module")
def cohort32(tmp_path_factory) -> Path:
    """Two slides (labels a, b), 32-px tiles, rows split 3:1 train/val."""
    return make_cohort(tmp_path_factory.mktemp("c32"), tile_size=32, read_size=64, width=512, height=384)


@pytest.fixture(scope="module")
def cohort64(tmp_path_factory) -> Path:
    return make_cohort(tmp_path_factory.mktemp("c64"), tile_size=64, read_size=128, width=512, height=256)


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _classify(table: Path, out: Path, **kw) -> JobSpec:
    return JobSpec.from_dict({"task": "classify", "table": str(table), "out": str(out), "epochs": 2, "batch_size": 8,
                              "lr": 1e-3, "seed": 1, "model": {"name": "small_cnn"}, **kw})


def test_vae_job_through_the_entry_point(cohort64, tmp_path):
    out = tmp_path / "vae"
    spec = JobSpec(task="vae", table=str(cohort64), out=str(out), epochs=2, batch_size=8, model={"name": "vae",
                   "latent_dim": 8})
    path = spec.write(tmp_path / "spec.yaml")
    res = subprocess.run([sys.executable, "-m", "wsi_lab.train", "--spec", str(path)], capture_output=True, text=True,
                         cwd=REPO, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("Training Loss: ") == 2 and res.stdout.count("Validation Loss: ") == 2
    assert JobSpec.read(out / "spec.json") == spec
    recs = _metrics(out)
    assert [(r["epoch"], r["split"]) for r in recs] == [(1, "train"), (1, "val"), (2, "train"), (2, "val")]
    assert all(r["loss"] > 0 and r["tiles_per_s"] > 0 for r in recs)
    assert recs[2]["loss"] < recs[0]["loss"]  # it learns
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    vae = load(out / "checkpoints" / "last.pt", expect={"name": "vae", "input_size": 64})
    assert isinstance(vae, VAE) and vae.latent_dim == 8
    from wsi_lab.data.table import read_table
    from wsi_lab.models.latents import latent_table

    table = read_table(cohort64)
    z = latent_table(vae, table.head(5))
    assert [c for c in z.columns if c.startswith("z_")] == [f"z_{i:02d}" for i in range(8)]
    assert np.allclose(z[["x", "y"]].to_numpy(), table.head(5)[["x", "y"]].to_numpy())


def test_classify_metrics_lines_and_best_checkpoint(cohort32, tmp_path, capsys):
    out = tmp_path / "clf"
    res = run_spec(_classify(cohort32, out))
    printed = capsys.readouterr().out
    assert res["epochs_run"] == 2 and printed.count("Validation Accuracy: ") == 2
    val = [r for r in _metrics(out) if r["split"] == "val"]
    assert len(val) == 2 and all(0 <= r["accuracy"] <= 1 and 0 <= r["balanced_accuracy"] <= 1 for r in val)
    assert all(r["auc"] is not None and 0 <= r["auc"] <= 1 for r in val)
    model = load(out / "checkpoints" / "best.pt")
    assert model.classes == ["a", "b"] and model.input_size == 32


def test_resume_repeats_no_epoch_and_matches_an_uninterrupted_run(cohort32, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    run_spec(_classify(cohort32, a, epochs=2))
    run_spec(_classify(cohort32, a, epochs=3))       # resumed: runs epoch 3 only
    assert "resuming" in capsys.readouterr().out
    run_spec(_classify(cohort32, b, epochs=3))       # the same seed, straight through
    ra, rb = _metrics(a), _metrics(b)
    assert [(r["epoch"], r["split"]) for r in ra] == [(e, s) for e in (1, 2, 3) for s in ("train", "val")]
    for x, y in zip(ra, rb):
        assert (x["epoch"], x["split"]) == (y["epoch"], y["split"])
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-6, abs=1e-9)
    wa = torch.load(a / "checkpoints" / "last.pt", weights_only=True)
    wb = torch.load(b / "checkpoints" / "last.pt", weights_only=True)
    assert wa["epoch"] == wb["epoch"] == 3
    for k in wa["state_dict"]:
        assert torch.allclose(wa["state_dict"][k], wb["state_dict"][k], atol=1e-6), k
    assert run_spec(_classify(cohort32, a, epochs=3))["epochs_run"] == 0   # complete: nothing to do
    other = run_spec(_classify(cohort32, tmp_path / "c", epochs=1, seed=2))
    assert other["epochs_run"] == 1 and _metrics(tmp_path / "c")[0]["loss"] != ra[0]["loss"]


def test_out_folder_of_another_job_is_refused(cohort32, tmp_path):
    run_spec(_classify(cohort32, tmp_path / "o", epochs=1))
    with pytest.raises(InvalidParameterError, match=r"another job.*'lr'"):
        run_spec(_classify(cohort32, tmp_path / "o", epochs=1, lr=0.5))


def _weights(tmp_path: Path) -> tuple[Path, str]:
    from wsi_lab.io import file_sha256
    from wsi_lab.models import build_encoder

    torch.manual_seed(0)
    enc = build_encoder("h-optimus-0", **TINY_VIT)
    path = tmp_path / "tiny_hoptimus.pt"
    torch.save(enc.backbone.state_dict(), path)
    return path, file_sha256(path)


@pytest.fixture(scope="module")
def mil_cohort(tmp_path_factory) -> Path:
    """Four slides (a, b, a, b), 28-px tiles for a tiny ViT; s2, s3 form the validation split."""
    return make_cohort(tmp_path_factory.mktemp("mil"), slides=4, tile_size=28, read_size=56, width=448, height=224,
                       val_slides=("s2", "s3"))


def test_features_then_mil(mil_cohort, tmp_path, capsys):
    from wsi_lab.data.table import read_table

    weights, sha = _weights(tmp_path)
    feats_dir = tmp_path / "features"
    spec = JobSpec(task="features", table=str(mil_cohort), out=str(feats_dir), batch_size=16,
                   model={"name": "h-optimus-0", "weights": str(weights), "sha256": sha, **TINY_VIT})
    res = run_spec(spec)
    assert res == {"slides_written": 4, "slides_skipped": 0, "out": str(feats_dir)}
    table = read_table(mil_cohort)
    feats, coords, meta = read_features(feats_dir, "s1")
    rows = table[table.slide_id == "s1"]
    assert feats.shape == (len(rows), 48) and np.isfinite(feats).all()
    assert np.array_equal(coords[["x", "y"]].to_numpy(), rows[["x", "y"]].to_numpy())
    assert (meta["backbone"], meta["weights_sha256"], meta["input_size"], meta["pooling"], meta["mpp"]) == \
        ("h-optimus-0", sha, 28, "cls", 0.5)
    assert meta["mean"] == pytest.approx([0.707223, 0.578729, 0.703617])
    mtime = (feats_dir / "s1.npz").stat().st_mtime_ns
    (feats_dir / "s3.npz").unlink()                       # an interrupted run: one slide missing
    capsys.readouterr()
    assert run_spec(spec)["slides_written"] == 1          # resumable per slide
    assert capsys.readouterr().out.count("complete, skipped") == 3
    assert (feats_dir / "s1.npz").stat().st_mtime_ns == mtime
    mil = JobSpec(task="mil", table=str(mil_cohort), out=str(tmp_path / "mil"), features=str(feats_dir),
                  model={"name": "abmil", "hidden_dim": 16, "attention_dim": 8}, max_tiles=6, batch_size=2, epochs=2,
                  lr=1e-2)
    run_spec(mil)
    val = [r for r in _metrics(tmp_path / "mil") if r["split"] == "val"]
    assert len(val) == 2 and val[0]["tiles"] == 2 and "accuracy" in val[0]
    model = load(tmp_path / "mil" / "checkpoints" / "best.pt")
    bag = torch.from_numpy(feats)
    logits, att = model(bag)
    assert logits.shape == (1, 2) and att.shape == (1, len(feats)) and model.classes == ["a", "b"]


def test_features_refuse_wrong_tile_size_and_weights(mil_cohort, tmp_path):
    weights, _ = _weights(tmp_path)
    spec = JobSpec(task="features", table=str(mil_cohort), out=str(tmp_path / "f"),
                   model={"name": "h-optimus-0", "weights": str(weights), "sha256": "f" * 64, **TINY_VIT})
    with pytest.raises(CheckpointError, match="SHA-256"):
        run_spec(spec)
    spec = spec.replace(model={"name": "h-optimus-0", **{**TINY_VIT, "input_size": 56}})
    with pytest.raises(InvalidParameterError, match="tile_size"):
        run_spec(spec.replace(out=str(tmp_path / "g")))


# -- bad input --------------------------------------------------------------------------------
def _table_variant(src: Path, dst: Path, edit) -> Path:
    from wsi_lab.data.table import read_table, write_table

    t = read_table(src)
    t = edit(t)
    write_table(t, dst)
    return dst


def test_empty_and_single_class_training_splits(cohort32, tmp_path):
    empty = _table_variant(cohort32, tmp_path / "e.parquet", lambda t: t.assign(split="val"))
    with pytest.raises(DataError, match="training split 'train'.*empty"):
        run_spec(_classify(empty, tmp_path / "o1"))
    single = _table_variant(cohort32, tmp_path / "s.parquet", lambda t: t.assign(label="a"))
    with pytest.raises(DataError, match=r"1 class\(es\) \['a'\]"):
        run_spec(_classify(single, tmp_path / "o2"))
    nosplit = _table_variant(cohort32, tmp_path / "n.parquet", lambda t: t.drop(columns="split"))
    with pytest.raises(DataError, match="wsi-lab split"):
        run_spec(_classify(nosplit, tmp_path / "o3"))
    assert not (tmp_path / "o1" / "checkpoints").exists() and not (tmp_path / "o2" / "checkpoints").exists()


def test_missing_slide_is_named_before_training(tmp_path):
    table = make_cohort(tmp_path / "c", tile_size=32, read_size=64, width=256, height=256)
    (tmp_path / "c" / "s1.svs").unlink()
    with pytest.raises(DataError, match=r"missing slide.*s1 ->"):
        run_spec(_classify(table, tmp_path / "o"))
    assert not (tmp_path / "o" / "checkpoints").exists()


def test_checkpoint_of_another_tile_size_is_refused_on_resume(cohort64, tmp_path):
    out = tmp_path / "o"
    save_checkpoint(out / "checkpoints" / "last.pt", VAE(input_size=128), epoch=1, task="vae")
    spec = JobSpec(task="vae", table=str(cohort64), out=str(out), epochs=2, batch_size=8)
    with pytest.raises(CheckpointError, match="input_size is 128 but 64"):
        run_spec(spec)
    with pytest.raises(InvalidParameterError, match="input_size 128 differs from the table's tile_size 64"):
        run_spec(spec.replace(out=str(tmp_path / "p"), model={"name": "vae", "input_size": 128}))


def test_nan_loss_stops_with_no_checkpoint(mil_cohort, tmp_path):
    folder = tmp_path / "feats"
    folder.mkdir()
    table = pd.read_parquet(mil_cohort)
    for sid, g in table.groupby("slide_id"):
        feats = np.full((len(g), 4), np.nan, np.float32)
        meta = {"format": "wsi_lab.features/1"}
        np.savez(folder / f"{sid}.npz", features=feats, metadata=np.array(json.dumps(meta)),
                 **{c: g[c].to_numpy(np.int64) for c in ("x", "y", "level", "read_size", "tile_size")})
    spec = JobSpec(task="mil", table=str(mil_cohort), out=str(tmp_path / "o"), features=str(folder), model="abmil",
                   batch_size=2, epochs=2)
    with pytest.raises(TrainingError, match="loss is nan at epoch 1"):
        run_spec(spec)
    ck = tmp_path / "o" / "checkpoints"
    assert not ck.exists() or not any(ck.iterdir())
