"""Slide/patient aggregation and metrics on hand-built prediction tables (exact expected values)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

pytest.importorskip("sklearn")

from wsi_lab.errors import DataError, InvalidParameterError
from wsi_lab.infer import aggregate, classification_metrics, evaluate


def _table() -> pd.DataFrame:
    t = pd.DataFrame({
        "slide_id": ["s1", "s1", "s1", "s2", "s2", "s3"], "patient_id": ["p1", "p1", "p1", "p1", "p1", "p2"],
        "prob_a": [0.9, 0.6, 0.2, 0.3, 0.1, 0.7], "prob_b": [0.1, 0.4, 0.8, 0.7, 0.9, 0.3],
        "attention": [0.1, 0.1, 0.8, 0.5, 0.5, 1.0], "label": ["a", "a", "a", "b", "b", "a"],
    })
    t["pred"] = np.where(t.prob_a >= 0.5, "a", "b")
    t.attrs["wsi_lab"] = {"predict": {"classes": ["a", "b"]}}
    return t


def test_mean_vote_max_attention_by_slide():
    t = _table()
    mean = aggregate(t, "mean").set_index("slide_id")
    assert mean.loc["s1", "prob_a"] == pytest.approx(1.7 / 3) and mean.loc["s1", "pred"] == "a"
    assert mean.loc["s1", "n_tiles"] == 3 and mean.loc["s2", "label"] == "b"
    vote = aggregate(t, "vote").set_index("slide_id")
    assert vote.loc["s1", "prob_a"] == pytest.approx(2 / 3) and vote.loc["s2", "prob_b"] == 1.0
    att = aggregate(t, "attention").set_index("slide_id")
    assert att.loc["s1", "prob_a"] == pytest.approx(0.09 + 0.06 + 0.16) and att.loc["s1", "pred"] == "b"
    mx = aggregate(t, "max").set_index("slide_id")
    assert mx.loc["s1", "prob_a"] == pytest.approx(0.9 / 1.7)


def test_a_patient_with_several_slides_gets_one_answer():
    by_patient = aggregate(_table(), "mean", by="patient").set_index("patient_id")
    assert list(by_patient.index) == ["p1", "p2"]
    assert by_patient.loc["p1", "n_tiles"] == 5 and by_patient.loc["p1", "prob_a"] == pytest.approx(2.1 / 5)
    assert pd.isna(by_patient.loc["p1", "label"])  # its slides disagree


def test_aggregate_refuses_unknown_how_and_missing_columns():
    with pytest.raises(InvalidParameterError, match="median"):
        aggregate(_table(), "median")
    with pytest.raises(DataError, match="attention"):
        aggregate(_table().drop(columns="attention"), "attention")


def test_metrics_values_and_one_class_refusal():
    t = _table()
    m = classification_metrics(t["label"], t[["prob_a", "prob_b"]].to_numpy(), ["a", "b"])
    # tiles: a-labelled predicted a, a, b, a; b-labelled predicted b, b
    assert m["accuracy"] == pytest.approx(5 / 6)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 1) / 2)
    assert m["confusion_matrix"] == [[0.75, 0.25], [0.0, 1.0]] and m["confusion_counts"] == [[3, 1], [0, 2]]
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert m["auc"] == pytest.approx(0.875)
    with pytest.raises(DataError, match=r"only \['a'\]"):
        classification_metrics(["a", "a"], np.array([[0.6, 0.4], [0.3, 0.7]]), ["a", "b"])
    with pytest.raises(DataError, match="'c'"):
        classification_metrics(["a", "c"], np.array([[0.6, 0.4], [0.3, 0.7]]), ["a", "b"])


def test_evaluate_writes_metrics_json_and_png_plots(tmp_path):
    t = _table()
    result = evaluate(t, tmp_path / "ev")
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    for level in ("tile", "slide"):
        assert {"accuracy", "balanced_accuracy", "auc", "confusion_matrix", "classes"} <= set(saved[level])
    assert saved["slide"]["n"] == 3 and saved == json.loads(json.dumps(result))
    for name in ("confusion_tile", "confusion_slide", "roc_tile", "roc_slide"):
        with Image.open(tmp_path / "ev" / f"{name}.png") as im:
            assert im.format == "PNG" and im.size[0] > 200
    with pytest.raises(DataError, match="label"):
        evaluate(t.drop(columns="label"), tmp_path / "ev2")
