"""The training loop on real small runs: accuracy, determinism, optimizers, losses, divergence,
clipping, budgets, the progress bar."""
import io
import math

import pytest
import torch
from rich.console import Console
from torch import nn
from torch.nn import functional as F

from graddoctor import data, nets, progress, training
from graddoctor.errors import GradDoctorError
from graddoctor.nets import NetSpec
from graddoctor.training import TrainConfig, train

STEPS_PER_EPOCH = math.ceil(1438 / 64)  # digits training part, default batch size


@pytest.fixture(scope="module")
def digits():
    return data.digits(seed=0)


def relu_mlp(depth: int = 3, seed: int = 0, **kw) -> nn.Module:
    return nets.build(NetSpec(depth=depth, width=64, activation="relu", **kw), seed=seed)


@pytest.mark.parametrize("seed", (0, 1, 2))
def test_three_layer_relu_mlp_learns_digits(digits, seed):
    cfg = TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, epochs=10, seed=seed)
    hist = train(relu_mlp(seed=seed), data.digits(seed=seed), cfg, progress_bar=False)
    assert hist.epoch == list(range(1, 11))
    assert hist.final_val_acc >= 0.90  # measured 0.969-0.975 (seeds 0-2)
    assert hist.train_loss[-1] < hist.train_loss[0] < math.log(10)
    assert len(hist.step_loss) == 10 * STEPS_PER_EPOCH
    assert hist.diverged_at is None and hist.seconds > 0


def test_same_seed_same_losses_other_seed_other_losses(digits):
    def run(data_seed: int, global_seed: int):
        model = relu_mlp(seed=0)
        torch.manual_seed(global_seed)  # unrelated RNG use between build and train must not matter
        return train(model, digits, TrainConfig(lr=0.05, epochs=2, seed=data_seed), progress_bar=False)

    a, b, c = run(0, 1), run(0, 2), run(1, 1)
    assert a.step_loss == b.step_loss and a.val_loss == b.val_loss  # bit-identical
    assert a.step_loss != c.step_loss  # the config's seed sets the mini-batch order


@pytest.mark.parametrize("cfg", [
    TrainConfig(optimizer="adam", lr=1e-3, epochs=4),
    TrainConfig(optimizer="sgd", lr=0.05, nesterov=True, epochs=4),
    TrainConfig(loss="mse", lr=0.1, epochs=4),
], ids=["adam", "sgd-nesterov", "mse"])
def test_optimizers_and_losses_train(digits, cfg):
    hist = train(relu_mlp(), digits, cfg, progress_bar=False)
    assert hist.final_val_acc >= 0.85  # chance is 0.1
    assert hist.train_loss[-1] < 0.5 * hist.train_loss[0]


def test_make_optimizer_follows_the_config():
    model = relu_mlp()
    opt = training.make_optimizer(model, TrainConfig(lr=0.3, momentum=0.5, nesterov=True, weight_decay=1e-4))
    assert isinstance(opt, torch.optim.SGD)
    group = opt.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.3, 0.5, True, 1e-4)
    assert isinstance(training.make_optimizer(model, TrainConfig(optimizer="adam")), torch.optim.Adam)


def test_mse_is_mean_squared_error_against_one_hot_targets():
    out, y = torch.randn(5, 4), torch.tensor([0, 3, 1, 1, 2])
    manual = ((out - torch.eye(4)[y]) ** 2).mean()
    torch.testing.assert_close(training.loss_fn("mse")(out, y), manual)
    torch.testing.assert_close(training.loss_fn("mse")(out, torch.eye(4)[y]), manual)  # float targets as given
    torch.testing.assert_close(training.loss_fn("cross_entropy")(out, y), F.cross_entropy(out, y))
    with pytest.raises(GradDoctorError, match="cross_entropy, mse"):
        training.loss_fn("l1")


class InfModel(nn.Module):
    """Pathology: the output is +inf, so the very first loss is NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(64, 10)

    def forward(self, x):
        return self.lin(x) * float("inf")


@pytest.mark.parametrize("make,lr,at_most", [(lambda: relu_mlp(), 1e6, 5), (InfModel, 0.01, 0)],
                         ids=["lr-1e6", "inf-output"])
def test_non_finite_loss_stops_training_without_exception(digits, make, lr, at_most):
    hist = train(make(), digits, TrainConfig(lr=lr, epochs=3), progress_bar=False)
    assert hist.diverged_at is not None and hist.diverged_at <= at_most
    assert len(hist.step_loss) == hist.diverged_at + 1
    assert not math.isfinite(hist.step_loss[-1])
    assert all(math.isfinite(v) for v in hist.step_loss[:-1])
    assert hist.epoch == [1]  # stopped in the first epoch, which is still evaluated


def test_non_finite_step_is_not_applied():
    model = InfModel()
    before = model.lin.weight.detach().clone()
    train(model, data.from_tensors(torch.randn(20, 64), torch.arange(20) % 10), TrainConfig(epochs=1),
          progress_bar=False)
    assert torch.equal(model.lin.weight, before)


class RecordingSGD(torch.optim.SGD):
    """Records the global gradient norm the optimizer sees at each step."""

    def __init__(self, params, **kw) -> None:
        self.params_list = list(params)
        super().__init__(self.params_list, **kw)
        self.norms: list[float] = []

    def step(self, closure=None):
        self.norms.append(torch.cat([p.grad.flatten() for p in self.params_list]).norm().item())
        return super().step(closure)


@pytest.mark.parametrize("clip", (None, 0.05))
def test_clip_norm_clips_what_the_optimizer_sees(digits, clip):
    model = relu_mlp()
    opt = RecordingSGD(model.parameters(), lr=0.05, momentum=0.9)
    train(model, digits, TrainConfig(clip_norm=clip, max_steps=30), optimizer=opt, progress_bar=False)
    assert len(opt.norms) == 30
    if clip is None:
        assert min(opt.norms) > 0.1  # without clipping the norms are well above 0.05
    else:
        assert max(opt.norms) <= clip * (1 + 1e-4)
        assert min(opt.norms) > clip * 0.99  # every step was clipped down to the limit


@pytest.mark.parametrize("max_steps,epochs", [(7, 1), (STEPS_PER_EPOCH + 5, 2)])
def test_max_steps_is_honoured(digits, max_steps, epochs):
    seen = []
    hist = train(relu_mlp(), digits, TrainConfig(epochs=10, max_steps=max_steps),
                 on_step=lambda step, loss: seen.append((step, loss)), progress_bar=False)
    assert len(hist.step_loss) == max_steps and hist.epoch == list(range(1, epochs + 1))
    assert [s for s, _ in seen] == list(range(max_steps))
    assert [v for _, v in seen] == hist.step_loss


def test_models_without_trainable_parameters_are_rejected(digits):
    with pytest.raises(GradDoctorError, match="no parameters"):
        train(nn.ReLU(), digits, progress_bar=False)
    frozen = relu_mlp().requires_grad_(False)
    with pytest.raises(GradDoctorError, match="no trainable parameters"):
        train(frozen, digits, progress_bar=False)


@pytest.mark.parametrize("bad,match", [
    (dict(lr=-1), "lr"), (dict(lr=float("nan")), "lr"), (dict(momentum=1.0), "momentum"),
    (dict(epochs=0), "epochs"), (dict(batch_size=0), "batch_size"), (dict(clip_norm=0), "clip_norm"),
    (dict(max_steps=0), "max_steps"), (dict(weight_decay=-1), "weight_decay"),
    (dict(optimizer="rmsprop"), "sgd, adam"), (dict(loss="l1"), "cross_entropy, mse"),
], ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_bad_config_is_rejected(bad, match):
    with pytest.raises(GradDoctorError, match=match):
        TrainConfig(**bad)


def test_cnn_trains_on_digit_images():
    images = data.digits(seed=0, image=True)
    spec = NetSpec(kind="cnn", depth=4, width=16, in_shape=images.in_shape, init="he_normal",
                   batchnorm="before_activation")
    hist = train(nets.build(spec, seed=0), images, TrainConfig(lr=0.05, epochs=4), progress_bar=False)
    assert hist.final_val_acc > 0.6  # measured 0.83-0.92 (seeds 0-3); chance is 0.1


def test_regression_targets_and_empty_validation():
    x = torch.randn(64, 4)
    y = x @ torch.randn(4, 2)
    model = nets.build(NetSpec(depth=2, width=16, in_shape=(4,), out_features=2, dtype="float64"), seed=0)
    hist = train(model, data.from_tensors(x, y, val_fraction=0.0), TrainConfig(loss="mse", lr=0.05, epochs=20),
                 progress_bar=False)
    assert hist.train_loss[-1] < 0.2 * hist.train_loss[0]
    assert math.isnan(hist.val_loss[-1])  # no validation data: nan, not a made-up 0


def test_evaluate_restores_the_mode(digits):
    model = relu_mlp(batchnorm="before_activation")
    model.train()
    loss, acc = training.evaluate(model, digits.x_val, digits.y_val, F.cross_entropy)
    assert model.training
    with torch.no_grad():  # the oracle: the same numbers in eval mode (BatchNorm's running statistics)
        out = model.eval()(digits.x_val)
    assert loss == pytest.approx(float(F.cross_entropy(out, digits.y_val)), rel=1e-5)
    assert acc == pytest.approx(float((out.argmax(1) == digits.y_val).double().mean()))
    training.evaluate(model, digits.x_val, digits.y_val, F.cross_entropy)
    assert not model.training


def test_probe_hooks_are_called_every_step(digits):
    class Recorder:
        def __init__(self):
            self.optimizer, self.losses = None, []

        def bind_optimizer(self, opt):
            self.optimizer = opt

        def step(self, loss):
            self.losses.append(float(loss.detach()))

    rec = Recorder()
    hist = train(relu_mlp(), digits, TrainConfig(max_steps=9), probe=rec, progress_bar=False)
    assert isinstance(rec.optimizer, torch.optim.SGD) and rec.losses == hist.step_loss


def test_progress_bar_shows_loss_and_accuracy():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    with progress.bar(3, "training", console=console) as bar:
        bar.update(1, epoch="1/1", loss="0.1234")
        bar.update(2, loss="0.0567", val_acc="0.912")
    text = out.getvalue()
    assert "training" in text and "3/3" in text and "loss 0.0567" in text and "val_acc 0.912" in text
    quiet = io.StringIO()
    with progress.bar(3, "training", console=Console(file=quiet)) as bar:  # not a terminal: silent
        bar.update(3, loss="1")
    assert quiet.getvalue() == ""


def test_training_bar_shows_loss_and_validation_accuracy(digits, monkeypatch):
    out, original = io.StringIO(), progress.bar
    console = Console(file=out, force_terminal=True, width=160)
    monkeypatch.setattr(training.progress, "bar", lambda *a, **kw: original(*a, **{**kw, "console": console}))
    hist = train(relu_mlp(), digits, TrainConfig(epochs=2))
    text = out.getvalue()
    assert f"{2 * STEPS_PER_EPOCH}/{2 * STEPS_PER_EPOCH}" in text
    assert "epoch 2/2" in text  # the bar shows the run's own numbers as it goes:
    assert f"loss {hist.step_loss[-1]:.4f}" in text and f"val_acc {hist.final_val_acc:.3f}" in text
