"""Batch inference over TileTables: real generated slides, tiny real models, a real Dask LocalCluster."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

from tests._traindata import make_cohort  # noqa: E402
from wsi_lab.data.table import read_table  # noqa: E402
from wsi_lab.errors import CheckpointError, DataError, InvalidParameterError  # noqa: E402
from wsi_lab.infer import predict, predict_slides, read_predictions, write_predictions  # noqa: E402
from wsi_lab.models import VAE, AttentionMIL, TileClassifier, latent_table, save_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> pd.DataFrame:
    folder = tmp_path_factory.mktemp("cohort")
    return read_table(make_cohort(folder, slides=2, tile_size=32, read_size=64, width=384, height=192))


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return TileClassifier("small_cnn", classes=["a", "b"], input_size=32).eval()


@pytest.fixture
def ckpt(tmp_path, classifier) -> Path:
    return save_checkpoint(tmp_path / "clf.pt", classifier)


def _direct_probs(model, table: pd.DataFrame) -> np.ndarray:
    from wsi_lab.data.dataset import TileDataset

    ds = TileDataset(table, label_column="__none__")
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    with torch.no_grad():
        return torch.softmax(model(x), 1).numpy()


def test_classifier_columns_match_the_model_run_directly(cohort, classifier):
    out = predict(classifier, cohort, batch_size=7)
    assert len(out) == len(cohort) and list(out.index) == list(cohort.index)
    assert {"prob_a", "prob_b", "pred"} <= set(out.columns)
    probs = out[["prob_a", "prob_b"]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs, _direct_probs(classifier, cohort), atol=1e-5)
    assert (out["pred"] == np.array(["a", "b"])[probs.argmax(1)]).all()
    meta = out.attrs["wsi_lab"]["predict"]
    assert meta["kind"] == "classifier" and meta["classes"] == ["a", "b"] and len(meta["checkpoint_hash"]) == 64


def test_any_index_is_kept_even_with_duplicates(cohort, classifier):
    shuffled = cohort.sample(frac=1.0, random_state=0)
    shuffled.index = [7] * len(shuffled)
    out = predict(classifier, shuffled)
    assert list(out.index) == [7] * len(shuffled)
    assert (out[["x", "y", "slide_id"]].to_numpy() == shuffled[["x", "y", "slide_id"]].to_numpy()).all()
    ref = predict(classifier, cohort).loc[cohort.sample(frac=1.0, random_state=0).index]
    np.testing.assert_allclose(out["prob_a"].to_numpy(), ref["prob_a"].to_numpy(), atol=1e-6)


def test_bf16_autocast_on_cpu_gives_the_same_predictions_within_tolerance(cohort, classifier):
    fp32 = predict(classifier, cohort, device="cpu", precision="fp32")
    bf16 = predict(classifier, cohort, device="cpu", precision="bf16")
    np.testing.assert_allclose(bf16["prob_a"], fp32["prob_a"], atol=0.03)
    with pytest.raises(InvalidParameterError, match="fp16"):
        predict(classifier, cohort, device="cpu", precision="fp16")


def test_resume_skips_complete_slides_and_reruns_on_a_new_checkpoint_or_a_damaged_file(tmp_path, cohort, ckpt):
    out = tmp_path / "pred"
    first = predict_slides(ckpt, cohort, out=out)
    assert sorted(first.done) == ["s0", "s1"] and not first.skipped
    again = predict_slides(ckpt, cohort, out=out)
    assert sorted(again.skipped) == ["s0", "s1"] and not again.done
    pd.testing.assert_frame_equal(again.table, first.table)
    saved = read_predictions(out / "s0" / "predictions.parquet")
    assert saved.attrs["wsi_lab"]["predict"]["checkpoint_hash"] == first.checkpoint_hash
    # a damaged output: that slide alone runs again
    (out / "s1" / "predictions.parquet").write_bytes(b"truncated")
    third = predict_slides(ckpt, cohort, out=out)
    assert third.done == ["s1"] and third.skipped == ["s0"]
    # other weights: a different checkpoint hash, every slide runs again
    torch.manual_seed(1)
    other = save_checkpoint(tmp_path / "other.pt", TileClassifier("small_cnn", classes=["a", "b"], input_size=32))
    fourth = predict_slides(other, cohort, out=out)
    assert sorted(fourth.done) == ["s0", "s1"] and fourth.checkpoint_hash != first.checkpoint_hash


def test_dask_fan_out_reports_a_failing_slide_while_the_others_finish(tmp_path, cohort, ckpt):
    broken = tmp_path / "broken.svs"
    broken.write_bytes(b"not a slide at all")
    meta = json.loads(json.dumps(cohort.attrs["wsi_lab"]))
    meta["slides"]["s1"]["path"] = str(broken)
    table = cohort.copy()
    table.attrs = {"wsi_lab": meta}
    events = []
    result = predict_slides(ckpt, table, out=tmp_path / "pred", client="local", n_workers=1, progress=events.append)
    assert result.done == ["s0"]
    assert list(result.failed) == ["s1"] and "broken.svs" in result.failed["s1"]
    assert set(result.table["slide_id"]) == {"s0"}
    assert "s1" in result.table.attrs["wsi_lab"]["predict"]["failed"]
    assert events[-1].finished and events[-1].failed == 1
    assert not (tmp_path / "pred" / "s1" / "manifest.json").exists()
    here = predict(ckpt, cohort[cohort.slide_id == "s0"])
    np.testing.assert_allclose(result.table["prob_a"], here["prob_a"], atol=1e-6)


def test_progress_counts_every_tile(cohort, classifier):
    events = []
    predict(classifier, cohort, batch_size=5, progress=events.append)
    assert events[-1].finished and events[-1].done == len(cohort) and events[-1].unit == "tiles"
    assert events[-1].metrics["tiles"] == len(cohort)
    assert any(0 < e.done < len(cohort) for e in events)


def test_vae_latents_and_reconstruction_error(tmp_path_factory):
    table = read_table(make_cohort(tmp_path_factory.mktemp("vae"), slides=1, tile_size=64, read_size=64, width=256,
                                   height=128))
    torch.manual_seed(0)
    vae = VAE(input_size=64, latent_dim=4, h_dim=64).eval()
    out = predict(vae, table)
    z = [f"z_{i:02d}" for i in range(4)]
    assert set(z + ["recon_error"]) <= set(out.columns) and "pred" not in out.columns
    np.testing.assert_allclose(out[z].to_numpy(), latent_table(vae, table)[z].to_numpy(), atol=1e-5)
    assert (out["recon_error"] > 0).all() and (out["recon_error"] < 1).all()
    from wsi_lab.infer import evaluate

    folder = tmp_path_factory.mktemp("vae-eval")
    summary = evaluate(out, folder, checkpoint=vae)["vae"]
    assert summary["tiles"] == len(table) and summary["recon_error"]["mean"] > 0
    from PIL import Image

    with Image.open(folder / "reconstructions.png") as im:
        assert im.size[1] == 2 * 64 + 12 and im.size[0] == 8 * (64 + 4) + 4  # inputs above reconstructions
    lean = predict(vae, table, recon_error=False)
    assert "recon_error" not in lean.columns and np.allclose(lean[z], out[z], atol=1e-5)


def test_mil_attention_from_feature_files(tmp_path, cohort):
    from wsi_lab.train.features import _write

    feats = tmp_path / "features"
    feats.mkdir()
    rng = np.random.default_rng(0)
    for sid, rows in cohort.groupby("slide_id"):
        _write(feats / f"{sid}.npz", rng.normal(size=(len(rows), 8)).astype(np.float32), rows.iloc[::-1],
               {"format": "wsi_lab.features/1"})
    torch.manual_seed(0)
    mil = AttentionMIL(in_dim=8, classes=["a", "b"], hidden_dim=16, attention_dim=8)
    out = predict(mil, cohort, features=feats)
    sums = out.groupby("slide_id")["attention"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-5)
    assert set(out["slide_pred"]) <= {"a", "b"}
    with pytest.raises(InvalidParameterError, match="features"):
        predict(mil, cohort)


def test_bad_input_is_refused_naming_the_file_and_value(tmp_path, cohort, ckpt):
    big = save_checkpoint(tmp_path / "big.pt", TileClassifier("small_cnn", classes=["a", "b"], input_size=48))
    with pytest.raises(CheckpointError, match=r"big\.pt.*48.*\[32\]"):
        predict(big, cohort)
    other = save_checkpoint(tmp_path / "xy.pt", TileClassifier("small_cnn", classes=["x", "y"], input_size=32))
    with pytest.raises(CheckpointError, match=r"xy\.pt.*\['x', 'y'\].*\['a', 'b'\]"):
        predict(other, cohort)
    with pytest.raises(DataError, match="empty"):
        predict(ckpt, cohort.iloc[:0])
    with pytest.raises(CheckpointError, match="missing.pt"):
        predict(tmp_path / "missing.pt", cohort)


def test_csv_and_parquet_keep_the_checkpoint_hash_and_classes(tmp_path, cohort, classifier):
    out = predict(classifier, cohort)
    for name in ("p.parquet", "p.csv"):
        write_predictions(out, tmp_path / name)
        back = read_predictions(tmp_path / name)
        assert back.attrs["wsi_lab"]["predict"]["classes"] == ["a", "b"]
        assert back.attrs["wsi_lab"]["predict"]["checkpoint_hash"] == out.attrs["wsi_lab"]["predict"]["checkpoint_hash"]
        np.testing.assert_allclose(back["prob_b"], out["prob_b"], atol=1e-6)
    shutil.rmtree(tmp_path, ignore_errors=True)
