"""Patient-level stratified splits and the leakage check, on real-slide tables."""

from __future__ import annotations

import pytest

from tests._datatables import cohort
from wsi_lab.data.splits import check_no_leakage, parse_fractions, split_by_patient, split_summary
from wsi_lab.errors import DataError, InvalidParameterError, LeakageError


@pytest.fixture(scope="module")
def table():
    from tests.conftest import CMU

    if not CMU.exists():
        pytest.skip("CMU slide missing")
    # 40 patients, 2 slides each, 3 tiles per slide; labels cycle LUAD/LUSC/KIRC -> unbalanced strata
    return cohort(CMU, patients=40, slides_per_patient=2, tiles_per_slide=3, labels=("LUAD", "LUSC", "LUAD", "KIRC"))


def test_split_is_by_patient_stratified_and_deterministic(table):
    out = split_by_patient(table, seed=3)
    assert set(out["split"]) == {"train", "val", "test"} and out["split"].notna().all()
    check_no_leakage(out)
    per_patient = out.groupby("patient_id")["split"].nunique()
    assert (per_patient == 1).all()
    counts = out.groupby("split")["patient_id"].nunique()
    assert counts.to_dict() == {"train": 28, "val": 6, "test": 6}
    # every class is present in every split (stratified)
    assert (out.groupby("split")["label"].nunique() == 3).all()
    train_luad = out[(out.split == "train") & (out.label == "LUAD")]["patient_id"].nunique()
    assert train_luad == 14  # 70 % of the 20 LUAD patients
    again = split_by_patient(table, seed=3)
    assert again["split"].tolist() == out["split"].tolist()
    other = split_by_patient(table, seed=4)
    assert other["split"].tolist() != out["split"].tolist()
    assert out.attrs["wsi_lab"]["split"]["seed"] == 3
    assert out.attrs["wsi_lab"]["slides"] == table.attrs["wsi_lab"]["slides"]
    assert "split" not in table.columns
    s = split_summary(out)
    assert s["tiles"].sum() == len(out)


def test_split_without_stratification_and_without_patient_column(table):
    t = table.drop(columns=["patient_id", "label"])
    out = split_by_patient(t, fractions="0.5,0.25,0.25", stratify=None, seed=0)
    # patient_id derived from the TCGA barcode: the 2 slides of a patient stay together
    assert out["patient_id"].nunique() == 40
    assert out.groupby("split")["patient_id"].nunique().to_dict() == {"train": 20, "val": 10, "test": 10}
    check_no_leakage(out)


def test_few_patients(table):
    three = table[table["patient_id"].isin(sorted(set(table["patient_id"]))[:3])]
    out = split_by_patient(three, seed=0)
    assert out.groupby("split")["patient_id"].nunique().to_dict() == {"train": 1, "val": 1, "test": 1}
    two = table[table["patient_id"].isin(sorted(set(table["patient_id"]))[:2])]
    with pytest.raises(DataError, match=r"2 patient\(s\) cannot fill the 3 non-empty splits"):
        split_by_patient(two)
    out = split_by_patient(two, fractions=(0.5, 0.0, 0.5))
    assert set(out["split"]) == {"train", "test"}


@pytest.mark.parametrize("fractions", [(0.7, 0.2, 0.2), (1.2, -0.1, -0.1), (0.5, 0.5), "a,b,c", (float("nan"), 0.5, 0.5)])
def test_bad_fractions(table, fractions):
    with pytest.raises(InvalidParameterError):
        split_by_patient(table, fractions=fractions)


def test_missing_labels_or_column(table):
    with pytest.raises(DataError, match="attach labels first"):
        split_by_patient(table.drop(columns=["label"]))
    t = table.copy()
    t.loc[t.index[:3], "label"] = None
    with pytest.raises(DataError, match="have no 'label'"):
        split_by_patient(t)


def test_check_no_leakage_names_patients_and_splits(table):
    out = split_by_patient(table, seed=0)
    pid = out.loc[out.split == "train", "patient_id"].iloc[0]
    bad = out.copy()
    bad.loc[bad.index[(bad.patient_id == pid).to_numpy()][:1], "split"] = "test"
    with pytest.raises(LeakageError, match=rf"{pid} in test, train"):
        check_no_leakage(bad)
    assert issubclass(LeakageError, DataError)


def test_parse_fractions():
    assert parse_fractions("0.8, 0.1 ,0.1") == (0.8, 0.1, 0.1)
    assert parse_fractions([1, 0, 0]) == (1.0, 0.0, 0.0)
