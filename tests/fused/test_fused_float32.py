"""float32: a 3-epoch digits array agrees with solo runs (statuses; minimal losses to 1e-3)."""

from __future__ import annotations

import pytest

from sensitivity import train
from sensitivity.fused import run_fused

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name,lrs", [("sgd", [0.01, 0.3, 1e4]), ("adam-hd", [1e-3, 1e-2, 10.0])])
def test_digits_three_epochs_agree_with_solo(name, lrs):
    base = {"dataset": "digits", "model": "mlp", "model_args": {"hidden": [32]}, "optimizer": name,
            "batch_size": 64, "epochs": 3, "device": "cpu"}
    configs = [{**base, "lr": lr, "seed": s} for lr in lrs for s in (0, 1)]
    fused = run_fused(configs)
    for cfg, result in zip(configs, fused):
        solo = train.run_trial(cfg)
        assert result.row["status"] == solo.row["status"]
        assert result.row["array_size"] == len(configs) and result.row["array_id"]
        if solo.row["status"] == "ok":
            for key in ("min_train_loss", "min_test_loss"):
                assert result.row[key] == pytest.approx(solo.row[key], rel=1e-3)
    assert any(r.row["status"] == "diverged" for r in fused)


@pytest.mark.parametrize("name", ["sgdn-hd", "adam-hd-adam"])
def test_checkpoint_resumes_an_array(name, tmp_path, monkeypatch):
    """Killed after epoch 1: the array's one checkpoint file resumes it to the uninterrupted result."""
    base = {"dataset": "digits", "model": "mlp", "model_args": {"hidden": [16]}, "optimizer": name,
            "batch_size": 128, "epochs": 3, "device": "cpu", "dataset_args": {"train_size": 512}}
    configs = [{**base, "lr": lr, "seed": 3} for lr in (0.01, 0.05, 1e4)]
    whole = run_fused(configs)

    from sensitivity.fused import array

    real = array._Runner.epoch

    def crash_at_2(self, active, epoch):
        if epoch == 2:
            raise KeyboardInterrupt("killed")
        return real(self, active, epoch)

    monkeypatch.setattr(array._Runner, "epoch", crash_at_2)
    with pytest.raises(KeyboardInterrupt):
        run_fused(configs, checkpoint_dir=str(tmp_path))
    assert len(list(tmp_path.iterdir())) == 1
    monkeypatch.setattr(array._Runner, "epoch", real)
    resumed = run_fused(configs, checkpoint_dir=str(tmp_path))
    assert list(tmp_path.iterdir()) == []
    for a, b in zip(whole, resumed):
        assert a.row["status"] == b.row["status"] and a.row["steps"] == b.row["steps"]
        assert [c["train_loss"] for c in a.curve] == [c["train_loss"] for c in b.curve]
        assert [c["lr"] for c in a.curve] == [c["lr"] for c in b.curve]
