"""sensitivity.train.run_trial: outcome row, curve, seeding, divergence, decay, thresholds, resume.

Budget: about 20 s on one busy core (digits, a one-hidden-layer MLP, a few epochs).
"""

import math

import pytest
import torch
import torch.nn.functional as F

from sensitivity.outcome import Tracker
from sensitivity import data as D
from sensitivity import solo, train
from sensitivity.optim import available
from sensitivity.train import run_trial, validate_config

BASE = {"dataset": "digits", "model": "mlp", "model_args": {"hidden": [32]}, "optimizer": "sgd", "lr": 0.05,
        "batch_size": 64, "epochs": 2, "seed": 0}
STEPS_PER_EPOCH = math.ceil(1437 / 64)  # digits' training split

CONTRACT = ["trial_id", "study", "dataset", "model", "optimizer", "lr", "beta", "decay", "seed", "batch_size",
            "epochs", "weight_decay", "status", "min_train_loss", "min_test_loss", "final_train_loss",
            "final_test_loss", "best_test_acc", "final_test_acc", "final_lr", "epochs_completed", "steps",
            "wall_time_s", "error", "label", "device"]
CURVE = ["trial_id", "epoch", "step", "train_loss", "test_loss", "train_acc", "test_acc", "lr"]
LOSSES = ["min_train_loss", "min_test_loss", "final_train_loss", "final_test_loss"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _same(a, b):
    """Rows equal but for the wall time."""
    return {k: v for k, v in a.items() if k != "wall_time_s"} == {k: v for k, v in b.items() if k != "wall_time_s"}


def _no_nan(result):
    for key, value in result.row.items():
        assert not (isinstance(value, float) and math.isnan(value)), key
    for row in result.curve:
        for key, value in row.items():
            assert not (isinstance(value, float) and math.isnan(value)), key


def _interrupt_at_eval(monkeypatch, n):
    """Make the n-th epoch's test evaluation raise, as a killed worker would stop mid-run.

    Evaluation 0 is the initial model's (L0), so epoch n's is call n + 1.
    """
    real, calls = train.evaluate, []

    def evaluate(*args, **kwargs):
        calls.append(1)
        if len(calls) == n + 1:
            raise KeyboardInterrupt("interrupted")
        return real(*args, **kwargs)

    monkeypatch.setattr(solo, "evaluate", evaluate)


# ---------------------------------------------------------------------------
# the row and the curve


def test_row_and_curve_follow_the_contract():
    config = {**BASE, "optimizer": "sgdn", "optimizer_args": {"momentum": 0.8}, "thresholds": [2.5, 1e-3],
              "study": "unit", "label": "nesterov", "weight_decay": 1e-4}
    result = run_trial(config)
    row = result.row
    assert set(CONTRACT) <= set(row)
    from sensitivity.results import trial_id

    assert row["trial_id"] == trial_id(config) and len(row["trial_id"]) == 16
    assert (row["study"], row["label"], row["optimizer"], row["device"]) == ("unit", "nesterov", "sgdn", "cpu")
    assert (row["momentum"], row["lr"], row["beta"], row["decay"], row["weight_decay"]) == (0.8, 0.05, None, None, 1e-4)
    assert row["status"] == "ok" and row["error"] is None
    assert row["epochs_completed"] == 2 and row["steps"] == 2 * STEPS_PER_EPOCH
    assert row["iters_to_2.5"] == 1 and row["iters_to_0.001"] is None  # the first loss is about ln 10 < 2.5
    assert [c["epoch"] for c in result.curve] == [1, 2]
    assert [c["step"] for c in result.curve] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    for c in result.curve:
        assert set(CURVE) <= set(c) and c["trial_id"] == row["trial_id"] and c["lr"] == 0.05
    assert row["min_train_loss"] == min(c["train_loss"] for c in result.curve)
    assert row["min_test_loss"] == min(c["test_loss"] for c in result.curve)
    assert row["final_test_acc"] == result.curve[-1]["test_acc"]
    assert row["best_test_acc"] == max(c["test_acc"] for c in result.curve)
    assert row["final_lr"] == 0.05 and row["wall_time_s"] > 0
    assert result.curve[-1]["train_loss"] < result.curve[0]["train_loss"]  # it learns
    assert run_trial({**BASE, "optimizer": "adam", "optimizer_args": {"betas": [0.8, 0.99]}}).row["betas"] == \
        "[0.8, 0.99]"  # sequence hyperparameters as JSON text, so tables can group by them


def test_rows_carry_the_loss_at_initialization():
    first = run_trial({**BASE, "epochs": 1})
    # L0 does not depend on the optimizer or lr: same weights, same first batch, measured before any step
    for config in ({**BASE, "optimizer": "adam", "lr": 1e-3, "epochs": 1}, {**BASE, "lr": 100.0, "epochs": 1}):
        row = run_trial(config).row
        assert (row["init_train_loss"], row["init_test_loss"]) == \
               (first.row["init_train_loss"], first.row["init_test_loss"])
    row = first.row
    # a fresh 10-class network predicts near uniform: about ln 10, and training lowers the loss below it
    assert abs(row["init_train_loss"] - math.log(10)) < 0.5 and abs(row["init_test_loss"] - math.log(10)) < 0.5
    assert row["min_train_loss"] < row["init_train_loss"] and row["min_test_loss"] < row["init_test_loss"]
    d = D.load("digits")
    model = train.build_model(validate_config(BASE), d.input_shape, 10)
    assert row["init_test_loss"] == pytest.approx(train.evaluate(model, d.test_x, d.test_y)[0], rel=1e-12)


def test_hd_rows_carry_beta_and_the_learned_lr():
    row = run_trial({**BASE, "optimizer": "sgd-hd", "beta": 1e-3}).row
    assert row["beta"] == 1e-3 and row["status"] == "ok"
    assert row["final_lr"] != 0.05  # the learned alpha, not alpha_0
    assert run_trial({**BASE, "optimizer": "sgd-hd", "epochs": 1}).row["beta"] == \
        available()["sgd-hd"].hyperparameters["beta"]


# ---------------------------------------------------------------------------
# seeding


def test_same_config_same_row():
    config = {**BASE, "optimizer": "adam", "lr": 1e-3, "thresholds": [1.0]}
    rng = torch.get_rng_state()
    a, b = run_trial(config), run_trial(config)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG is left alone
    assert _same(a.row, b.row) and a.curve == b.curve
    other = run_trial({**config, "seed": 1})
    assert other.row["min_train_loss"] != a.row["min_train_loss"]


def test_optimizers_start_from_the_same_weights_and_data(tmp_path, monkeypatch):
    d = D.load("digits")
    names = ["sgd", "sgdn", "adam", "sgd-hd", "adam-hd"]
    models = [train.build_model(validate_config({**BASE, "optimizer": n}), d.input_shape, 10) for n in names]
    for m in models[1:]:
        assert all(torch.equal(a, b) for a, b in zip(models[0].state_dict().values(), m.state_dict().values()))
    # in run_trial: with lr = 0 (and beta = 0) the weights stay at the initialisation
    curves = [run_trial({**BASE, "optimizer": n, "lr": 0.0, "epochs": 1,
                         **({"beta": 0.0} if available()[n].is_hd else {})}).curve for n in names]
    for c in curves[1:]:
        assert [(r["train_loss"], r["test_loss"], r["test_acc"]) for r in c] == \
               [(r["train_loss"], r["test_loss"], r["test_acc"]) for r in curves[0]]
    # the data order (and augmentation) stream is consumed identically by every optimizer
    states = []
    for n in ("sgd", "adam", "adam-hd"):
        _interrupt_at_eval(monkeypatch, 2)
        with pytest.raises(KeyboardInterrupt):
            run_trial({**BASE, "optimizer": n}, checkpoint_dir=tmp_path / n)
        (saved,) = (tmp_path / n).glob("*.pt")
        states.append(torch.load(saved, weights_only=False)["data_rng"])
    assert all(torch.equal(states[0], s) for s in states[1:])


# ---------------------------------------------------------------------------
# divergence


def test_sgd_lr_100_diverges_without_nan():
    result = run_trial({**BASE, "lr": 100.0, "epochs": 3})
    row = result.row
    assert row["status"] == "diverged" and row["error"] is None
    assert row["epochs_completed"] == 0 and result.curve == []
    assert 1 <= row["steps"] <= STEPS_PER_EPOCH
    assert all(row[k] == math.inf for k in LOSSES)
    assert row["final_test_acc"] is None and row["final_lr"] == 100.0
    _no_nan(result)


def _growing_lr(**extra):
    # lr x10 after every epoch: 0.01, 0.1, 1, 10, ... diverges after a few good epochs
    return {**BASE, "lr": 0.01, "epochs": 8, "decay": {"every_epochs": 1, "factor": 10.0}, **extra}


def test_divergence_keeps_the_minima_reached_before_it():
    result = run_trial(_growing_lr(thresholds=[2.0]))
    row = result.row
    assert row["status"] == "diverged" and 1 <= row["epochs_completed"] < 8
    assert len(result.curve) == row["epochs_completed"]
    assert row["min_train_loss"] == min(c["train_loss"] for c in result.curve) < math.inf
    assert row["min_test_loss"] == min(c["test_loss"] for c in result.curve) < math.inf
    assert row["final_train_loss"] == row["final_test_loss"] == math.inf
    assert row["epochs_completed"] * STEPS_PER_EPOCH < row["steps"] <= (row["epochs_completed"] + 1) * STEPS_PER_EPOCH
    assert row["final_lr"] == result.curve[-1]["lr"] and row["iters_to_2"] is not None
    _no_nan(result)


def test_divergence_factor_on_a_known_trace():
    tracker = Tracker([1.5], factor=2.0, smoothing=0.0)
    assert not tracker.replay([1.0, 1.9, 1.2], [4, 4, 2])
    assert tracker.end_epoch() == pytest.approx((4 * 1.0 + 4 * 1.9 + 2 * 1.2) / 10)  # weighted by batch size
    assert tracker.replay([1.4, 2.1, 0.5], [4, 4, 4]) and tracker.diverged_at == 5  # 2.1 > 2 x 1.0
    assert tracker.reached == {1.5: 1}
    nan = Tracker([], factor=math.inf, smoothing=0.5)
    assert nan.replay([3.0, 1e30, float("nan")], [1, 1, 1]) and nan.diverged_at == 3


@pytest.mark.parametrize("every", [5, 64])
def test_chunked_loss_reads_decide_exactly_as_per_step(monkeypatch, every):
    configs = [{**BASE, "thresholds": [1.5, 0.6]}, _growing_lr(thresholds=[2.0, 1.0])]
    per_step = [run_trial(c) for c in configs]
    monkeypatch.setattr(train, "sync_every", lambda device: every)  # the accelerator path, on the CPU
    chunked = [run_trial(c) for c in configs]
    for a, b in zip(per_step, chunked):
        assert _same(a.row, b.row) and a.curve == b.curve
    assert chunked[1].row["status"] == "diverged"


def _strict_sgd(monkeypatch, fail_at=None):
    """Replace sgd by one that raises on non-finite gradients (or at step `fail_at`), as some optimizers do."""
    from sensitivity import optim

    real = optim.create

    class Strict(torch.optim.SGD):
        steps = 0

        def step(self, closure=None):
            loss = super().step(closure)
            Strict.steps += 1
            if Strict.steps == fail_at:
                raise RuntimeError("a genuine bug")
            if not all(torch.isfinite(p.grad).all() for g in self.param_groups for p in g["params"]):
                raise RuntimeError("non-finite gradient")
            return loss

    def create(name, params, **hp):
        params = list(params)  # (name, tensor) pairs
        real(name, params, **hp)  # the real checks
        return Strict([p for _, p in params], lr=hp["lr"])

    monkeypatch.setattr(optim, "create", create)


@pytest.mark.parametrize("every", [1, 64])
def test_an_optimizer_raising_after_divergence_is_still_diverged(monkeypatch, every):
    monkeypatch.setattr(train, "sync_every", lambda device: every)
    _strict_sgd(monkeypatch)
    # factor inf: the run diverges at the first non-finite loss, whose gradient makes the optimizer raise
    result = run_trial({**BASE, "lr": 1e10, "divergence_factor": math.inf})
    assert result.row["status"] == "diverged" and 1 <= result.row["steps"] <= STEPS_PER_EPOCH
    _no_nan(result)
    _strict_sgd(monkeypatch, fail_at=3)
    with pytest.raises(RuntimeError, match="a genuine bug"):  # a clean run's error propagates
        run_trial(BASE)


# ---------------------------------------------------------------------------
# decay and thresholds


@pytest.mark.parametrize("optimizer", ["sgd", "sgd-hd"])
def test_step_decay_halves_the_lr_on_the_curve(optimizer):
    hd = {"beta": 0.0} if optimizer == "sgd-hd" else {}  # beta 0: only the decay moves alpha
    result = run_trial({**BASE, "optimizer": optimizer, **hd, "lr": 0.08, "epochs": 5,
                        "decay": {"every_epochs": 2, "factor": 0.5}})
    assert [c["lr"] for c in result.curve] == [0.08, 0.08, 0.04, 0.04, 0.02]
    assert result.row["decay"] == "step:2:0.5" and result.row["final_lr"] == 0.02
    ms = run_trial({**BASE, "lr": 0.1, "epochs": 4, "decay": {"milestones": [1, 3], "factor": 0.1}})
    assert [c["lr"] for c in ms.curve] == pytest.approx([0.1, 0.01, 0.01, 0.001])
    assert ms.row["decay"] == "milestones:1+3:0.1"


def test_running_loss_on_a_known_trace():
    assert train.running_loss([4.0, 2.0, 1.0], 0.5) == pytest.approx([4.0, 2.0 / 0.75, 1.5 / 0.875])
    assert train.running_loss([3.0, 1.0], 0.0) == [3.0, 1.0]
    tracker = Tracker([3.0, 2.5, 1.0], factor=10.0, smoothing=0.5)
    tracker.replay([4.0, 2.0, 1.0], [1, 1, 1])  # running 4, 2.67, 1.71
    assert tracker.reached == {3.0: 2, 2.5: 3, 1.0: None}


def test_iters_to_threshold_matches_a_hand_computed_trace():
    # Full-batch gradient descent: every step sees the whole training split, so the loss trace
    # can be recomputed by hand from the same initial weights.
    config = {"dataset": "digits", "model": "logreg", "optimizer": "sgd", "lr": 0.5, "batch_size": 5000,
              "epochs": 12, "seed": 3, "loss_smoothing": 0.7}
    d = D.load("digits")
    model = train.build_model(validate_config(config), d.input_shape, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for _ in range(12):
        opt.zero_grad()
        loss = F.cross_entropy(model(d.train_x), d.train_y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    running = train.running_loss(losses, 0.7)
    assert all(a - b > 1e-4 for a, b in zip(running, running[1:]))  # decreasing, far above round-off
    thresholds = [(running[i] + running[i + 1]) / 2 for i in (0, 4, 9)] + [running[-1] / 2]
    result = run_trial({**config, "thresholds": thresholds})
    assert [c["train_loss"] for c in result.curve] == pytest.approx(losses, rel=1e-5)
    iters = [result.row[f"iters_to_{t:g}"] for t in thresholds]
    assert iters == [2, 6, 11, None]


# ---------------------------------------------------------------------------
# checkpoints


def test_checkpoint_then_resume_gives_the_same_row(tmp_path, monkeypatch):
    config = {**BASE, "optimizer": "adam-hd", "lr": 1e-3, "beta": 1e-6, "epochs": 3, "thresholds": [1.0],
              "decay": {"every_epochs": 1, "factor": 0.5}}
    whole = run_trial(config)
    _interrupt_at_eval(monkeypatch, 3)  # dies in epoch 3, after the checkpoint of epoch 2
    with pytest.raises(KeyboardInterrupt):
        run_trial(config, checkpoint_dir=tmp_path)
    (saved,) = tmp_path.glob("*.pt")
    assert saved.name == f"{whole.row['trial_id']}.pt" and torch.load(saved, weights_only=False)["epoch"] == 2
    monkeypatch.undo()
    resumed = run_trial(config, checkpoint_dir=tmp_path)
    assert _same(whole.row, resumed.row) and whole.curve == resumed.curve
    assert list(tmp_path.iterdir()) == []  # removed once the trial finished
    plain = run_trial(config, checkpoint_dir=tmp_path)  # nothing to resume: a fresh run, same answer
    assert _same(whole.row, plain.row)


@pytest.mark.parametrize("optimizer, lr", [("schedule-free-sgd", 0.5), ("schedule-free-adamw", 0.01),
                                           ("prodigy", 1.0), ("dog", 1.0)])
def test_a_learning_rate_free_trial_resumes_bit_for_bit(tmp_path, monkeypatch, optimizer, lr):
    """Interrupted in epoch 3 and resumed from the checkpoint of epoch 2, the trial ends with the row
    and curve of the run never interrupted: Schedule-Free's z, k and weight sum and its mode (the
    checkpoint is written in train mode, after the epoch's evaluation at x), Prodigy's d and sums,
    DoG's distance and gradient sums all come back exactly."""
    config = {**BASE, "optimizer": optimizer, "lr": lr, "epochs": 3, "weight_decay": 1e-4,
              "model_args": {"hidden": [16]}}
    whole = run_trial(config)
    _interrupt_at_eval(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        run_trial(config, checkpoint_dir=tmp_path)
    (saved,) = tmp_path.glob("*.pt")
    assert torch.load(saved, weights_only=False)["epoch"] == 2
    monkeypatch.undo()
    resumed = run_trial(config, checkpoint_dir=tmp_path)
    assert whole.row["status"] == "ok" and _same(whole.row, resumed.row) and whole.curve == resumed.curve


# ---------------------------------------------------------------------------
# options and bad configs


def test_train_fraction_and_augment():
    row = run_trial({**BASE, "train_fraction": 0.1, "epochs": 1}).row
    assert row["steps"] == math.ceil(round(0.1 * 1437) / 64) and row["train_fraction"] == 0.1
    images = {"dataset": "synthetic", "dataset_args": {"shape": [3, 8, 8], "train_size": 64, "test_size": 16},
              "model": "logreg", "optimizer": "sgd", "lr": 0.1, "batch_size": 16, "epochs": 2}
    a, b = run_trial({**images, "augment": True}), run_trial({**images, "augment": True})
    plain = run_trial(images)
    assert _same(a.row, b.row) and a.row["min_train_loss"] != plain.row["min_train_loss"]


@pytest.mark.parametrize("key,value", [
    ("dataset", "imagenet"), ("model", "alexnet"), ("optimizer", "lbfgs"),
    ("batch_size", 0), ("batch_size", -4), ("batch_size", 2.5), ("epochs", 0), ("epochs", "3"),
    ("lr", "0.1"), ("lr", float("nan")), ("lr", -1.0), ("lr", True), ("beta", 1e-3),
    ("seed", -1), ("weight_decay", "big"), ("train_fraction", 1.5), ("augment", "yes"),
    ("thresholds", ["low"]), ("divergence_factor", 0.5), ("loss_smoothing", 1.0), ("device", "tpu"),
    ("decay", {"every_epochs": 0, "factor": 0.5}), ("decay", {"milestones": [3, 2], "factor": 0.1}),
    ("decay", {"factor": 0.5}), ("decay", {"every_epochs": 2, "factor": 0.5, "gamma": 1}),
    ("model_args", {"hidden": "wide"}), ("dataset_args", {"colour": True}), ("learning_rate", 0.1),
])
def test_bad_configs_name_the_key(key, value):
    with pytest.raises(ValueError, match=key) as info:
        validate_config({**BASE, key: value})
    assert "\n" not in str(info.value)


def test_more_bad_configs():
    with pytest.raises(ValueError, match="optimizer_args.lr"):
        validate_config({**BASE, "optimizer_args": {"lr": 0.1}})
    with pytest.raises(ValueError, match="decay: 'adam-l4' sets its own step size"):
        validate_config({**BASE, "optimizer": "adam-l4", "lr": 0.15,
                         "decay": {"every_epochs": 1, "factor": 0.5}})
    with pytest.raises(ValueError, match="nesterov"):  # the optimizer's own check, run up front
        validate_config({**BASE, "optimizer_args": {"nesterov": True}})
    with pytest.raises(ValueError, match="augment"):
        validate_config({**BASE, "dataset": "synthetic", "dataset_args": {"shape": [10]}, "augment": True})
    with pytest.raises(ValueError, match="model: vgg16"):
        validate_config({**BASE, "model": "vgg16", "model_args": {}})
    with pytest.raises(ValueError, match="dataset: missing"):
        validate_config({"model": "mlp", "optimizer": "sgd"})
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device"):
            validate_config({**BASE, "device": "cuda"})
    with pytest.raises(ValueError, match="batch_size"):
        run_trial({**BASE, "batch_size": 0})


def test_validate_config_fills_defaults():
    cfg = validate_config({"dataset": "digits", "model": "logreg", "optimizer": "adam-hd"})
    assert set(cfg) == set(train.CONFIG_KEYS)
    assert cfg["lr"] == available()["adam-hd"].hyperparameters["lr"]
    assert cfg["beta"] == available()["adam-hd"].hyperparameters["beta"]
    assert cfg["device"] in ("cpu", "cuda") and cfg["thresholds"] == [] and cfg["decay"] is None
    assert validate_config({**BASE, "thresholds": 0.3})["thresholds"] == [0.3]


def test_schedule_free_is_evaluated_at_x_and_trained_at_y(monkeypatch):
    """Each evaluation (L0 and every epoch) runs between the optimizer's .eval() and .train(), as the
    Schedule-Free authors require; the curve's test loss is then the loss at x."""
    from sensitivity.optim.schedule_free import SGDScheduleFree

    calls = []
    for name in ("eval", "train"):
        real = getattr(SGDScheduleFree, name)

        def spy(self, real=real, name=name):
            calls.append(name)
            return real(self)

        monkeypatch.setattr(SGDScheduleFree, name, spy)
    evaluate = train.evaluate

    def evaluated(model, x, y):
        calls.append("evaluate")
        return evaluate(model, x, y)

    monkeypatch.setattr(solo, "evaluate", evaluated)
    result = train.run_trial({**BASE, "optimizer": "schedule-free-sgd", "lr": 0.5, "epochs": 2})
    assert result.row["status"] == "ok"
    assert calls == ["eval", "evaluate", "train"] * 3  # L0, then after each of the 2 epochs


def test_batch_norm_statistics_are_estimated_again_at_the_eval_point():
    """At an optimizer's eval point a batch-norm model's running statistics come from the first
    training batches, in train mode without grad; without an eval point nothing is touched."""
    from types import SimpleNamespace

    from sensitivity import loop

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    data = SimpleNamespace(train_x=torch.randn(200, 3) * 3 + 1)
    order = []

    class Swapping:
        def eval(self):
            order.append("eval")

        def train(self):
            order.append("train")

    def forward(m, x):
        order.append("forward")
        return m(x)

    before = model[1].running_mean.clone()
    with loop.evaluation_point(model, [torch.optim.SGD(model.parameters(), lr=0.1)], data, 16, forward):
        pass
    assert torch.equal(model[1].running_mean, before) and order == []
    with loop.evaluation_point(model, [Swapping()], data, 16, forward):
        assert order[0] == "eval" and order.count("forward") == 13  # ceil(200 / 16) batches, at most 50
        assert not torch.equal(model[1].running_mean, before)
    assert order[-1] == "train" and model.training
