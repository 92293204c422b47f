"""The `sensitivity` command: exit codes, one-line errors, validate/optimizers output; cluster.yaml.

Budget: about 15 s. `main()` runs in-process (bad input fails before Ray starts); one call goes
through the installed console script; the GPU check reuses the session's Ray.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sensitivity.cli import main
from sensitivity.optim import available

ROOT = Path(__file__).resolve().parents[1]
HEAD = "name: bad\ntask: {dataset: digits, model: mlp, epochs: 1}\nseeds: 1\noptimizers:\n"
BAD = {
    "unknown optimizer": (HEAD + "  - {name: sgdx, lr: 0.1}\n", "optimizers[0].name: unknown optimizer 'sgdx'"),
    "negative lr": (HEAD + "  - {name: sgd, lr: [0.1, -0.5]}\n", "optimizers[0].lr[1] must be > 0, got -0.5"),
    "beta on non-HD": (HEAD + "  - {name: adam, lr: 0.1, beta: 1.0e-4}\n", "optimizers[0].beta: beta applies only"),
    "empty grid": (HEAD + "  - {name: sgd, lr: []}\n", "optimizers[0].lr: empty grid"),
    "malformed YAML": (HEAD + "  - {name: sgd, lr: [0.1\n", "malformed YAML"),
    "missing field": ("name: bad\nseeds: 1\noptimizers:\n  - {name: sgd}\n", "task: missing required field"),
    "unknown dataset": ("name: bad\ntask: {dataset: imagenet, model: mlp}\noptimizers:\n  - {name: sgd}\n",
                        "task.dataset: unknown dataset 'imagenet'; choose from"),
    "unknown model": ("name: bad\ntask: {dataset: digits, model: vit}\noptimizers:\n  - {name: sgd}\n",
                      "task.model: unknown model 'vit'; choose from"),
}


@pytest.fixture
def bad_file(tmp_path, request):
    text, expected = BAD[request.param]
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path, expected


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize("bad_file", list(BAD), indirect=True)
def test_bad_input_exits_2_with_one_line(bad_file, command, capsys, tmp_path):
    path, expected = bad_file
    args = [command, str(path)] + (["--out", str(tmp_path / "out")] if command == "run" else [])
    assert main(args) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "out").exists()  # nothing ran, nothing written


def test_missing_study_file_and_bad_options_exit_2(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read study file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["run", str(tmp_path / "x.yaml"), "--max-concurrent", "0"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "argument --max-concurrent: must be an integer >= 1, got 0" in err, err
    with pytest.raises(SystemExit) as info:
        main(["run", str(tmp_path / "x.yaml"), "--max-concurrent", "two"])
    assert info.value.code == 2 and "must be an integer >= 1, got 'two'" in capsys.readouterr().err


def test_console_script_exit_code_and_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD["unknown optimizer"][0])
    proc = subprocess.run([str(Path(sys.executable).parent / "sensitivity"), "validate", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "choose from" in proc.stderr and "adam-hd" in proc.stderr


def test_validate_prints_counts_per_entry_and_total(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text("name: s\ntask: {dataset: digits, model: mlp}\nseeds: 3\noptimizers:\n"
                    "  - {name: sgd, lr: [0.1, 0.01]}\n  - {name: sgd-hd, label: hd, lr: 0.1, beta: [1.0e-4, 1.0e-3]}\n")
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("s: valid, grid")
    assert out[1].split() == ["[0]", "sgd", "6", "trials"] and out[2].split() == ["[1]", "hd", "6", "trials"]
    assert out[3].split() == ["total", "12", "trials"]
    assert main(["validate", str(path), "--smoke"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].split() == ["total", "3", "trials"]


def test_optimizers_lists_every_name_with_hyperparameters(capsys):
    assert main(["optimizers"]) == 0
    out = capsys.readouterr().out
    for name, info in available().items():
        assert f"\n{name}" in "\n" + out
        for key in info.hyperparameters:
            assert f"{key}=" in out
        assert f"    paper: {info.paper}\n" in out
    assert "sgd-hd [HD]" in out
    assert "\nprodigy: " in out and "growth_rate=inf" in out and "arXiv:2306.06101" in out


def test_plot_of_a_missing_results_dir_exits_2(tmp_path, capsys):
    pytest.importorskip("analysis.report")
    assert main(["plot", str(tmp_path / "nothing")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.slow
def test_gpus_requested_where_the_cluster_has_none_exits_2(tmp_path, capsys, ray_local):
    if ray_local.cluster_resources().get("GPU"):
        pytest.skip("this machine has a GPU")
    path = tmp_path / "gpu.yaml"
    path.write_text(HEAD + "  - {name: sgd, lr: 0.1}\nresources: {cpu: 1, gpu: 0.5}\n")
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "resources.gpu: 0.5 GPU per trial" in err and "no GPU" in err
    path.write_text(HEAD + "  - {name: sgd, lr: 0.1}\nresources: {cpu: 64}\n")
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "resources.cpu: 64 CPU per trial but the largest node has 2" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("gpu", [0, 0.5])
def test_a_cuda_device_where_the_cluster_has_no_gpu_exits_2_before_any_trial(gpu, tmp_path, capsys, ray_local):
    """device: cuda on a cluster without a GPU: one line naming task.device (and resources.gpu when the
    study asks each trial for a GPU too, which would otherwise be reported alone), nothing run or written."""
    if ray_local.cluster_resources().get("GPU"):
        pytest.skip("this machine has a GPU")
    path = tmp_path / "cuda.yaml"
    path.write_text(HEAD.replace("epochs: 1}", "epochs: 1, device: cuda}") + "  - {name: sgd, lr: [0.1, 0.2]}\n"
                    f"resources: {{cpu: 1, gpu: {gpu}}}\n")
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("sensitivity: task.device: cuda ") and "no node of the Ray cluster has" in err, err
    assert ("resources.gpu: 0.5" in err) == (gpu > 0), err
    written = [p.name for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert not [n for n in written if n.endswith((".parquet", ".pt", ".yaml", ".json"))], written


def test_cluster_yaml_is_a_launcher_config_with_a_closed_head():
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    assert config["provider"]["type"] == "aws"
    # the only ingress Ray's launcher adds besides node-to-node is SSH; nothing extra is opened
    assert "IpPermissions" not in config["provider"].get("security_group", {})
    assert config["provider"]["security_group"]["GroupName"]
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert not head["resources"].get("GPU") and head["node_config"]["InstanceType"].startswith(("m", "c", "r"))
    gpu = [t for name, t in types.items() if name != config["head_node_type"] and t["resources"].get("GPU")]
    assert gpu and gpu[0]["max_workers"] > gpu[0]["min_workers"] >= 0  # autoscaling GPU workers
    assert any("pip install" in c and "sensitivity" in c for c in config["setup_commands"])
    start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start and "0.0.0.0" not in (ROOT / "cluster.yaml").read_text()

