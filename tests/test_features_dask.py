"""Feature extraction fanned out on a real Dask LocalCluster: one task per slide, resumable per slide,
a failing slide returned as a Failure while the others finish, features equal to the in-process run."""

from __future__ import annotations

import numpy as np
import pytest

from tests._traindata import make_cohort
from wsi_lab.data.table import read_table, write_table
from wsi_lab.train import JobSpec

torch = pytest.importorskip("torch")
pytest.importorskip("distributed")
from wsi_lab.train.features import extract_features_dask, read_features  # noqa: E402

TINY_VIT = {"depth": 1, "embed_dim": 48, "num_heads": 2, "input_size": 28}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fdask")
    path = make_cohort(folder, slides=3, tile_size=28, read_size=56, width=336, height=168)
    table = read_table(path)
    table.attrs["wsi_lab"]["slides"]["s2"] = {"path": str(folder / "gone.svs")}  # a slide missing on disk
    write_table(table, path)
    return path


def test_features_fan_out_per_slide_on_dask(cohort, tmp_path, client):
    from wsi_lab.train.run import run_spec

    spec = JobSpec(task="features", table=str(cohort), out=str(tmp_path / "f"), batch_size=8,
                   model={"name": "h-optimus-0", **TINY_VIT})
    events = []
    res = extract_features_dask(spec, client=client, progress=events.append)
    assert sorted(res.done) == ["s0", "s1"] and res.skipped == []
    assert [(f.item, f.error_type) for f in res.failures] == [("s2", "DataError")] and "gone.svs" in res.failures[0].message
    assert events[-1].finished and events[-1].done == 3 and events[-1].items["s2"] == "failed"
    feats, coords, meta = read_features(tmp_path / "f", "s0")
    assert feats.shape == (len(coords), 48) and np.isfinite(feats).all() and meta["slide_id"] == "s0"
    again = extract_features_dask(spec, client=client)  # resumable: complete slides are skipped
    assert sorted(again.skipped) == ["s0", "s1"] and again.done == [] and len(again.failures) == 1
    # the same numbers as the in-process path (the recipe over the two good slides)
    good = read_table(cohort)
    good = good[good.slide_id != "s2"]
    good.attrs = read_table(cohort).attrs
    good.attrs["wsi_lab"]["slides"].pop("s2")
    write_table(good, tmp_path / "good.parquet")
    run_spec(spec.replace(table=str(tmp_path / "good.parquet"), out=str(tmp_path / "local")))
    local, _, _ = read_features(tmp_path / "local", "s0")
    assert np.allclose(local, feats, atol=1e-5)


def test_spec_data_block_names_the_dask_scheduler(cohort, tmp_path):
    from wsi_lab.errors import InvalidParameterError

    spec = JobSpec(task="features", table=str(cohort), out=str(tmp_path / "f"), data={"dask": "local", "n_workers": 1},
                   model={"name": "h-optimus-0", **TINY_VIT}).validate()
    assert spec.data == {"dask": "local", "n_workers": 1}
    with pytest.raises(InvalidParameterError, match="dask fans out feature extraction"):
        JobSpec(task="vae", table=str(cohort), out=str(tmp_path / "v"), data={"dask": "local"}).validate()
