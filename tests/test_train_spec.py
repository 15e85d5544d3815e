"""JobSpec: JSON/YAML round-trips, refusals naming the key, and no torch needed to read one."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from wsi_lab.errors import InvalidParameterError
from wsi_lab.runs import Spec
from wsi_lab.train.spec import JobSpec

BASE = {"task": "classify", "table": "t.parquet", "out": "runs/a", "model": {"name": "resnet18", "weights": "w.pth"},
        "epochs": 3, "batch_size": 8, "lr": 0.01, "seed": 7, "backend": "torchrun", "nproc": 2}


def test_round_trips_json_and_yaml(tmp_path):
    spec = JobSpec.from_dict(BASE)
    assert isinstance(spec, Spec) and spec.model == {"name": "resnet18", "weights": "w.pth"}
    assert JobSpec.from_json(spec.to_json()) == spec
    assert JobSpec.from_yaml(spec.to_yaml()) == spec
    assert spec.hash() == JobSpec.from_json(spec.to_json()).hash()
    assert spec.hash() != spec.replace(seed=8).hash()
    for name in ("s.json", "s.yaml"):
        assert JobSpec.read(spec.write(tmp_path / name)) == spec
    assert JobSpec(task="vae", table="t", out="o").model == {"name": "vae"}  # a preset name becomes a dict
    with pytest.raises(Exception) as exc:
        spec.epochs = 5  # frozen
    assert "frozen" in str(exc.value) or "cannot assign" in str(exc.value)


@pytest.mark.parametrize("change,key", [
    ({"epochs": 0}, "epochs"), ({"epochs": "3"}, "epochs"), ({"batch_size": -1}, "batch_size"),
    ({"lr": 0}, "lr"), ({"lr": float("nan")}, "lr"), ({"task": "dance"}, "task"), ({"task": "segment"}, "annotations"),
    ({"backend": "slurm"}, "backend"), ({"precision": "int8"}, "precision"), ({"nproc": 0}, "nproc"),
    ({"batch_size": 9}, "batch_size"), ({"model": "vae"}, "model"), ({"model": {"lr": 1}}, "model"),
    ({"num_workers": -2}, "num_workers"), ({"max_tiles": 0}, "max_tiles"), ({"device": "tpu"}, "device"),
    ({"backend": "local"}, "nproc"), ({"horovod": {"fp64": True}}, "horovod"), ({"table": ""}, "table"),
])
def test_impossible_values_are_refused_naming_the_key(change, key):
    with pytest.raises(InvalidParameterError, match=f"'{key}'"):
        JobSpec.from_dict({**BASE, **change})


def test_unknown_keys_and_sagemaker_are_refused():
    with pytest.raises(InvalidParameterError, match="learning_rate"):
        JobSpec.from_dict({**BASE, "learning_rate": 0.1})
    with pytest.raises(InvalidParameterError, match="'sagemaker.bucket'"):
        JobSpec.from_dict({**BASE, "sagemaker": {"instance_type": "ml.g5.xlarge"}})
    with pytest.raises(InvalidParameterError, match="'sagemaker'"):
        JobSpec.from_dict({**BASE, "backend": "sagemaker"})
    with pytest.raises(InvalidParameterError, match="'features'"):
        JobSpec.from_dict({"task": "mil", "table": "t", "out": "o", "model": "abmil"})
    with pytest.raises(InvalidParameterError, match="not valid YAML|mapping"):
        JobSpec.from_yaml("- a\n- b\n")


def test_tasks_accept_their_model_presets():
    for task, model in (("vae", "vae"), ("classify", "small_cnn"), ("classify", "resnet50"),
                        ("classify", "timm:convnext_tiny"), ("features", "h-optimus-0")):
        JobSpec(task=task, table="t", out="o", model=model).validate()
    JobSpec(task="mil", table="t", out="o", model="abmil", features="f", max_tiles=64).validate()
    with pytest.raises(InvalidParameterError, match="timm:<name>"):
        JobSpec(task="classify", table="t", out="o", model="timm:").validate()


def test_reading_a_spec_needs_no_torch(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(BASE))
    code = ("import sys; from wsi_lab.train import JobSpec; from wsi_lab.train.launcher import command_for; "
            f"s = JobSpec.read({str(path)!r}); command_for(s, 'x.json'); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_launch_and_jobspec_are_top_level():
    import wsi_lab
    from wsi_lab.train.launcher import launch

    assert wsi_lab.launch is launch and wsi_lab.JobSpec is JobSpec
