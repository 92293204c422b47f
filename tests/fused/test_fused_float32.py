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

    from sensitivity import loop

    real = loop._Epochs.epoch

    def crash_at_2(self, active, epoch):
        if epoch == 2:
            raise KeyboardInterrupt("killed")
        return real(self, active, epoch)

    monkeypatch.setattr(loop._Epochs, "epoch", crash_at_2)
    with pytest.raises(KeyboardInterrupt):
        run_fused(configs, checkpoint_dir=str(tmp_path))
    assert len(list(tmp_path.iterdir())) == 2  # one file per running member (lr 1e4 diverged in epoch 1)
    monkeypatch.setattr(loop._Epochs, "epoch", real)
    resumed = run_fused(configs, checkpoint_dir=str(tmp_path))
    assert list(tmp_path.iterdir()) == []
    for a, b in zip(whole, resumed):
        assert a.row["status"] == b.row["status"] and a.row["steps"] == b.row["steps"]
        assert a.row["init_test_loss"] == pytest.approx(b.row["init_test_loss"], rel=1e-6)  # float32 round-off
        assert a.row["final_lr"] == b.row["final_lr"]
        assert [c["train_loss"] for c in a.curve] == [c["train_loss"] for c in b.curve]
        assert [c["lr"] for c in a.curve] == [c["lr"] for c in b.curve]


@pytest.mark.parametrize("name", ["adam-hd", "sgdn"])
def test_a_re_cut_array_resumes_every_member_that_has_a_checkpoint(name, tmp_path, monkeypatch):
    """Killed after epoch 2 of 4, then run again with one more seed (the array is cut anew): the old
    members train epochs 3 and 4 only, the new one epochs 1 to 4, and every result equals an
    uninterrupted run's; a member that last trained alone resumes alone."""
    from sensitivity import loop

    base = {"dataset": "digits", "model": "mlp", "model_args": {"hidden": [16]}, "optimizer": name,
            "batch_size": 128, "epochs": 4, "device": "cpu", "dataset_args": {"train_size": 512}}
    configs = [{**base, "lr": lr, "seed": s} for lr in (0.01, 0.03) for s in (0, 1)]
    grown = configs + [{**base, "lr": 0.01, "seed": 2}]
    whole = run_fused(grown)
    real = loop._Epochs.epoch
    trained: list[tuple[int, int]] = []  # (epoch, seed) of every member epoch trained

    def counted(self, active, epoch):
        if epoch == 3 and stop[0]:
            raise KeyboardInterrupt("killed")
        trained.extend((epoch, m.record.seed) for m in active)
        return real(self, active, epoch)

    stop = [True]
    monkeypatch.setattr(loop._Epochs, "epoch", counted)
    with pytest.raises(KeyboardInterrupt):
        run_fused(configs, checkpoint_dir=str(tmp_path))
    assert len(list(tmp_path.glob("*.pt"))) == 4
    stop[0] = False
    trained.clear()
    resumed = run_fused(grown, checkpoint_dir=str(tmp_path))
    assert sorted(trained) == sorted([(e, s) for e in (3, 4) for s in (0, 0, 1, 1)]
                                     + [(e, 2) for e in (1, 2, 3, 4)])
    assert list(tmp_path.iterdir()) == []
    for a, b in zip(whole, resumed):
        assert a.row["status"] == b.row["status"] and a.row["steps"] == b.row["steps"]
        assert [c["train_loss"] for c in a.curve] == pytest.approx([c["train_loss"] for c in b.curve], rel=1e-5)
        assert b.row["init_test_loss"] == pytest.approx(a.row["init_test_loss"], rel=1e-6)
    # a member whose last epochs ran in an array, now run alone, resumes from its array's checkpoint
    stop[0] = True
    with pytest.raises(KeyboardInterrupt):
        run_fused(configs, checkpoint_dir=str(tmp_path))
    stop[0] = False
    trained.clear()
    alone = train.run_trial(configs[0], checkpoint_dir=str(tmp_path))
    assert trained == [(3, 0), (4, 0)]
    assert [c["train_loss"] for c in alone.curve] == pytest.approx([c["train_loss"] for c in whole[0].curve],
                                                                   rel=1e-5)


LR_FREE = {"prodigy": [0.5, 1.0], "d-adapt-sgd": [0.5, 1.0], "d-adapt-adam": [0.5, 1.0],
           "schedule-free-sgd": [0.3, 1.0], "schedule-free-adamw": [0.0025, 0.01], "dog": [0.5, 1.0],
           "ldog": [0.5, 1.0]}


@pytest.mark.parametrize("name", list(LR_FREE))
def test_lr_free_arrays_agree_with_solo_in_float32(name):
    """The learning-rate-free rules in an array (their d, η and averages per member) against their solo
    runs: 2 epochs on digits, statuses equal, minimal losses and the curves' effective lr to 1e-3."""
    base = {"dataset": "digits", "model": "mlp", "model_args": {"hidden": [32]}, "optimizer": name,
            "batch_size": 64, "epochs": 2, "device": "cpu", "weight_decay": 1e-4}
    configs = [{**base, "lr": lr, "seed": s} for lr in LR_FREE[name] for s in (0, 1)]
    for cfg, result in zip(configs, run_fused(configs)):
        solo = train.run_trial(cfg)
        assert result.row["status"] == solo.row["status"]
        if solo.row["status"] == "ok":
            for key in ("min_train_loss", "min_test_loss", "final_lr"):
                assert result.row[key] == pytest.approx(solo.row[key], rel=1e-3), key
            assert result.curve[-1].keys() == solo.curve[-1].keys()  # d, eta, ... as the solo run reports them
