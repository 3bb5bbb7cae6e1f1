"""The record format and what the diagnosis reads beyond layer metrics: lr, optimizer, dtypes,
every-step non-finite checks, zero-gradient fractions, block error signals, sinks."""
from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from models import ResidualBNCNN, backward_and_step
from torch import Tensor, nn
from torch.nn import functional as F

import graddoctor
from graddoctor import GradDoctorError, watch
from graddoctor.probe import record, slots
from graddoctor.probe.record import RawStep, Record
from graddoctor.probe.trace import LAYER_METRICS, STEP_METRICS

PROBE_DIR = Path(graddoctor.__file__).parent / "probe"


def mlp(activation: str = "relu", depth: int = 4) -> nn.Module:
    return graddoctor.build(graddoctor.NetSpec(depth=depth, width=16, in_shape=(6,), out_features=5,
                                               activation=activation), seed=0)


def batch(seed: int = 0, n: int = 16) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 5, (n,), generator=g)


# -- the record format ------------------------------------------------------------------------
def test_every_layer_and_step_metric_comes_from_a_declared_slot():
    made = {m for s in slots.SLOTS if s.axis == "layer" for m, _ in s.metrics}
    assert made == set(LAYER_METRICS)  # nothing computed outside the declarations
    assert {slots.GLOBAL_GRAD[0], *slots.HOST_STEP_METRICS} | {"nonfinite_loss"} == set(STEP_METRICS)
    assert slots.mask(loss_scaled=True).sum() == 5  # delta, input_grad, block_delta, time_input/output


def test_record_append_file_table_cut_and_scale():
    rec = Record()
    at = rec.append([torch.tensor(3.0), torch.tensor(4.0)])
    rec.file(slots.DELTA, 0, 10, at)
    rec.file(slots.OUT, 0, 10, at + 1)
    vec = rec.append(torch.tensor([1.0, 2.0, 3.0]))  # a per-time-step vector
    rec.file(slots.TIME_INPUT, 1, 4, vec, 3)
    extra = rec.append(torch.tensor([99.0]))  # a part's own value, no row
    rec.file_many(slots.GRAD_W, np.array([0, 1]), np.array([5, 6]), [torch.tensor(7.0), torch.tensor(8.0)])
    raw = rec.fetch()
    assert raw.values.tolist() == [3, 4, 1, 2, 3, 99, 7, 8]
    t = raw.table()
    assert t.shape == (5, record.WIDTH) and t[:, record.SLOT].tolist() == [
        slots.DELTA, slots.OUT, slots.TIME_INPUT, slots.GRAD_W, slots.GRAD_W]
    cut = raw.cut(extra, extra + 1)
    assert cut.values.tolist() == [3, 4, 1, 2, 3, 7, 8]
    assert cut.values[cut.table()[3:, record.INDEX]].tolist() == [7, 8]
    half = cut.scaled(slots.mask(loss_scaled=True), 0.5)  # norms x 0.5, sums of squares x 0.25
    assert half.values.tolist() == [1.5, 4, 0.25, 0.5, 0.75, 7, 8]
    assert raw.values.tolist()[:2] == [3, 4]  # copies: the original is untouched


def test_no_probe_module_imports_report_or_the_store():
    for path in PROBE_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                target = "." * node.level + (node.module or "")
                assert not target.startswith(("..report", "..store", "graddoctor.report", "graddoctor.store")), path


# -- what the diagnosis reads -----------------------------------------------------------------
def test_lr_per_recorded_step_and_optimizer_hyperparameters():
    model = mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95), eps=1e-7, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    x, y = batch()
    lrs = []
    with watch(model, optimizer=opt, every=2) as probe:
        for _ in range(5):
            lrs.append(opt.param_groups[0]["lr"])
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
    trace = probe.trace
    np.testing.assert_allclose(trace["lr"], lrs[::2])
    assert trace.meta["optimizer"] == {"type": "AdamW", "lr": 1e-2, "eps": 1e-7, "betas": [0.8, 0.95],
                                       "weight_decay": 0.05}
    m2 = mlp()
    sgd = torch.optim.SGD(m2.parameters(), lr=0.1, momentum=0.9)
    with watch(m2, optimizer=sgd) as p2:
        pass
    assert p2.trace.meta["optimizer"] == {"type": "SGD", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0}
    with watch(mlp()) as p3:  # no optimizer: no lr
        loss = F.cross_entropy(p3.model(x), y)
        loss.backward()
        p3.step(loss)
    assert np.isnan(p3.trace["lr"]).all() and "optimizer" not in p3.trace.meta


@pytest.mark.parametrize("case", ["float32", "autocast_bf16", "bf16_params", "scaler"])
def test_dtypes_and_zero_gradient_fraction(case):
    model = mlp("relu", depth=3)
    with torch.no_grad():  # dead ReLU units: whole rows of exactly-zero weight gradients
        model.body[0].linear.bias[:5] = -50.0
    if case == "bf16_params":
        model = model.to(torch.bfloat16)
    x, y = batch()
    x = x.to(next(model.parameters()).dtype)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8) if case == "scaler" else None
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with watch(model, optimizer=opt, scaler=scaler) as probe:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case in ("autocast_bf16", "scaler")):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        backward_and_step(loss, opt, scaler)
        probe.step(loss)
    trace = probe.trace
    expect = {"float32": (["float32"], None, False), "autocast_bf16": (["float32"], "bfloat16", False),
              "bf16_params": (["bfloat16"], None, False), "scaler": (["float32"], "bfloat16", True)}[case]
    assert trace.meta["dtypes"] == dict(zip(("params", "autocast", "grad_scaler"), expect))
    frac = trace["grad_zero_frac"][0]
    if case == "float32":
        assert np.isnan(frac).all()
        return
    for i, layer in enumerate(probe._layout.layers):
        grads = [p.grad for p in layer.weights + layer.biases]
        zeros = sum(int((g == 0).sum()) for g in grads) / sum(g.numel() for g in grads)
        assert frac[i] == pytest.approx(zeros, abs=1e-9), layer.name
    assert frac[1] >= 5 / 16  # the planted dead units: their rows of the next layer's gradient are 0


def train_steps(model, steps: int, every: int, make_loss, *, bound: bool = True) -> graddoctor.Probe:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    with watch(model, every=every, optimizer=opt if bound else None) as probe:
        for i in range(steps):
            loss = make_loss(i)
            opt.zero_grad()
            loss.backward()
            opt.step()
            probe.step(loss)
    return probe


class InfGrad(torch.autograd.Function):
    """Identity forward; an infinite gradient backward (the loss stays finite)."""

    @staticmethod
    def forward(ctx, t):
        return t.clone()

    @staticmethod
    def backward(ctx, g):
        return g * math.inf


@pytest.mark.parametrize("bound", [True, False], ids=["optimizer_bound", "probe_step"])
def test_nonfinite_on_an_unrecorded_step_is_found_with_every_10(bound):
    model = mlp()
    x, y = batch()

    def nan_loss_at_7(i):
        loss = F.cross_entropy(model(x), y)
        return loss * math.nan if i == 7 else loss

    meta = train_steps(model, 12, 10, nan_loss_at_7, bound=bound).trace.meta["nonfinite"]
    assert meta == {"first_step": 7, "what": "loss", "input_first_step": None}

    model = mlp()

    def inf_grad_at_13(i):  # the loss stays finite: only the gradient tells
        h = model.body(x)
        return F.cross_entropy(model.head(InfGrad.apply(h) if i == 13 else h), y)

    meta = train_steps(model, 16, 10, inf_grad_at_13, bound=bound).trace.meta["nonfinite"]
    assert meta == {"first_step": 13, "what": "grad", "input_first_step": None}

    model = mlp()
    bad = x.clone()
    bad[3, 2] = math.inf

    def bad_input_at_4(i):
        with torch.no_grad():
            model(bad)  # an evaluation pass: not a training input
        return F.cross_entropy(model(bad if i == 4 else x), y)

    meta = train_steps(model, 9, 10, bad_input_at_4, bound=bound).trace.meta["nonfinite"]
    assert meta["input_first_step"] == 4 and meta["first_step"] == 4

    model = mlp()
    clean = train_steps(model, 5, 3, lambda i: F.cross_entropy(model(x), y)).trace.meta["nonfinite"]
    assert clean == {"first_step": None, "what": None, "input_first_step": None}


def test_every_step_checks_ride_in_the_recorded_steps_host_copy(monkeypatch):
    from graddoctor.probe import collect

    monkeypatch.setattr(collect, "HOST_READS", False)  # the device path: what runs on a GPU
    calls = []
    real = record.fetch
    monkeypatch.setattr(record, "fetch", lambda values: calls.append(len(values)) or real(values))
    model = mlp()
    x, y = batch()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    with watch(model, every=5, optimizer=opt) as probe:
        with monkeypatch.context() as m:
            for name in ("item", "tolist", "__float__", "__bool__", "__int__"):  # no other way to the host
                m.setattr(Tensor, name, lambda *a, _n=name: pytest.fail(f"Tensor.{_n} inside the probe"))
            for i in range(12):
                loss = F.cross_entropy(model(x), y) * (math.nan if i == 11 else 1)
                opt.zero_grad()
                loss.backward()
                opt.step()
                probe.step(loss)
                if i == 6:
                    assert len(calls) == 2  # steps 0 and 5: one copy each, nothing on the others
        assert probe.trace.meta["nonfinite"]["first_step"] is None  # step 11 is not read yet
    assert len(calls) == 4  # steps 0, 5, 10, and the checks of step 11 at close
    assert probe.trace.meta["nonfinite"] == {"first_step": 11, "what": "loss", "input_first_step": None}


# -- blocks -----------------------------------------------------------------------------------
class ResidualMLP(nn.Module):
    """x + f_i(x) blocks; `shared` runs twice (one block, two calls); blocks defined out of order."""

    def __init__(self, width: int = 12) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.late = nn.Sequential(nn.Linear(width, width), nn.Tanh())
        self.shared = nn.Sequential(nn.Linear(width, width), nn.Tanh())
        self.stem = nn.Linear(6, width)
        self.head = nn.Linear(width, 5)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        h = h + self.shared(h)
        h = h + self.shared(h)
        h = h + self.late(h)
        return self.head(h)


def block_oracle(model: nn.Module, x: Tensor, y: Tensor, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per-element RMS and per-sample norm of dL/d(block output), pooled over calls, by autograd."""
    mods = dict(model.named_modules())
    outs: dict[str, list[Tensor]] = {n: [] for n in names}
    handles = [mods[n].register_forward_hook(lambda m, a, o, n=n: outs[n].append(o)) for n in names]
    loss = F.cross_entropy(model(x), y)
    for h in handles:
        h.remove()
    flat = [(n, t) for n in names for t in outs[n]]
    grads = torch.autograd.grad(loss, [t for _, t in flat])
    sq = {n: 0.0 for n in names}
    numel, samples = dict.fromkeys(names, 0), dict.fromkeys(names, 0)
    for (n, t), g in zip(flat, grads):
        sq[n] += float(g.double().square().sum())
        numel[n] += t.numel()
        samples[n] += t.shape[0]
    return (np.array([math.sqrt(sq[n] / numel[n]) for n in names]),
            np.array([math.sqrt(sq[n] / samples[n]) for n in names]))


def test_block_error_signals_match_autograd():
    model = ResidualMLP()
    x, y = batch(n=20)
    given = ["late", "shared"]  # forward order is shared, then late
    rms, norm = block_oracle(model, x, y, ["shared", "late"])
    with watch(model, blocks=given) as probe:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        probe.step(loss)
    trace = probe.trace
    assert trace.meta["blocks"] == ["shared", "late"]
    steps, got_rms = trace.series.get("block_delta_rms")
    _, got_norm = trace.series.get("block_delta_norm")
    assert steps.tolist() == [0]
    np.testing.assert_allclose(got_rms[0], rms, rtol=1e-5)
    np.testing.assert_allclose(got_norm[0], norm, rtol=1e-5)
    assert got_rms[0, 0] > 0 and not np.allclose(got_rms[0, 0], got_rms[0, 1])
    # the layers inside are recorded as before; the blocks add no layer
    assert trace.layer_names == ["stem", "shared.0", "late.0", "head"]


def test_blocks_on_a_cnn_with_batchnorm_every_and_no_hooks_left():
    model = ResidualBNCNN()
    x, y = model.example()
    names = ["blocks.0", "blocks.1"]
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with watch(model, blocks=names, every=2, optimizer=opt) as probe:
        for _ in range(3):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            rms, _ = block_oracle(model, x, y, names)  # same weights, same batch: the same signal
            opt.step()
            probe.step(loss)
            if probe._step - 1 in (0, 2):
                np.testing.assert_allclose(probe.trace.series.get("block_delta_rms")[1][-1], rms, rtol=1e-5)
    assert probe.trace.series.get("block_delta_rms")[0].tolist() == [0, 2]
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_blocks_arguments():
    model = ResidualMLP()
    with pytest.raises(GradDoctorError, match=r"no module named 'nope'.*'late'"):
        watch(model, blocks=["nope"])
    with pytest.raises(GradDoctorError, match="blocks must be"):
        watch(model, blocks="late")
    x, y = batch()
    for blocks in (None, "auto"):  # auto: structure.find_blocks (none found by the stub)
        with watch(model, blocks=blocks) as probe:
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            probe.step(loss)
        assert probe.trace.meta["blocks"] == [] and len(probe.trace.series) == 0
    with watch(model, blocks=["late"], stats="norms") as probe:  # norms: no module hooks, no blocks
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        probe.step(loss)
    assert probe.trace.meta["blocks"] == []


# -- sinks ------------------------------------------------------------------------------------
class ListSink:
    def __init__(self) -> None:
        self.rows, self.closed = [], False

    def write_new(self, trace) -> None:
        self.rows += trace.steps[len(self.rows):].tolist()

    def close(self) -> None:
        self.closed = True


def test_sinks_see_every_recorded_step_and_are_closed():
    sink = ListSink()
    model = mlp()
    x, y = batch()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    with watch(model, every=2, optimizer=opt, sinks=[sink]) as p2:
        for _ in range(7):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    assert sink.rows == p2.trace.steps.tolist() == [0, 2, 4, 6] and sink.closed
    with pytest.raises(GradDoctorError, match="not a sink"):
        watch(mlp(), sinks=[object()])


def test_raw_step_keeps_check_rows_when_a_part_drops_the_step():
    raw = RawStep(np.array([1.0, math.nan]), chunks=[np.array([[slots.DELTA, 0, 4, 0, 1],
                                                               [slots.CHECK_LOSS, 3, 0, 1, 1]])])
    kept = raw.keep(slots.mask(axis="check")[raw.table()[:, record.SLOT]])
    assert kept.table()[:, record.SLOT].tolist() == [slots.CHECK_LOSS]
