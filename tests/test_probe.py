"""graddoctor.watch: oracle comparisons, hook hygiene, every architecture in tests/models.py."""
from __future__ import annotations

import copy
import math
from collections import defaultdict

import numpy as np
import pytest
import torch
from models import (
    ALL,
    FrozenLayers,
    FunctionalActivations,
    LSTMModel,
    NoGradBranch,
    NoParameters,
    ResidualBNCNN,
    ReusedModule,
    SequentialInModuleDict,
    TiedWeights,
    TinyTransformer,
)
from torch import Tensor, nn
from torch.nn import functional as F

import graddoctor
from graddoctor import GradDoctorError, Trace, activations, watch
from graddoctor.probe import record
from graddoctor.probe.trace import LAYER_METRICS, STEP_METRICS


def mlp(activation: str = "tanh", depth: int = 4, dtype: str = "float32") -> nn.Module:
    return graddoctor.build(graddoctor.NetSpec(depth=depth, width=16, in_shape=(6,), out_features=5,
                                               activation=activation, dtype=dtype), seed=0)


def one_step(model: nn.Module, probe, x: Tensor, y: Tensor, opt=None) -> Tensor:
    loss = F.cross_entropy(model(x), y)
    if opt is not None:
        opt.zero_grad()
    loss.backward()
    if opt is not None:
        opt.step()
    probe.step(loss)
    return loss


def first_tensor(obj):
    return obj if isinstance(obj, Tensor) else next(t for t in obj if isinstance(t, Tensor))


def oracle(model: nn.Module, x: Tensor, y: Tensor, names: list[str]) -> dict[str, dict[str, float]]:
    """Independent per-layer numbers on a copy: autograd.grad w.r.t. captured outputs and inputs."""
    m = copy.deepcopy(model)
    outs, ins = defaultdict(list), defaultdict(list)
    mods = dict(m.named_modules())

    def capture(name):
        def hook(mod, args, out):
            if torch.is_grad_enabled():
                ins[name].append(args[0])
                if isinstance(out, Tensor):  # keep the value before any later in-place op
                    outs[name].append(out)
                    return out.clone()
                outs[name].append(first_tensor(out))
        return hook

    handles = [mods[n].register_forward_hook(capture(n)) for n in names]
    loss = F.cross_entropy(m(x), y)
    for h in handles:
        h.remove()
    flat = [(n, kind, t) for n in names for kind, ts in (("delta", outs[n]), ("input", ins[n]))
            for t in ts if t.requires_grad]
    grads = torch.autograd.grad(loss, [t for _, _, t in flat], allow_unused=True)
    sq, cnt = defaultdict(float), defaultdict(int)
    for (n, kind, t), g in zip(flat, grads):
        if g is not None:
            sq[n, kind] += float(g.double().square().sum())
            cnt[n, kind] += t.numel()
    res = {}
    for n in names:
        xs = [t.detach().double() for t in ins[n] if t.is_floating_point()]
        allx = torch.cat([t.flatten() for t in xs]) if xs else None
        res[n] = {
            "delta_rms": math.sqrt(sq[n, "delta"] / cnt[n, "delta"]) if cnt[n, "delta"] else math.nan,
            "input_grad_rms": math.sqrt(sq[n, "input"] / cnt[n, "input"]) if cnt[n, "input"] else math.nan,
            "act_mean": float(allx.mean()) if allx is not None else math.nan,
            "act_std": float(allx.std(unbiased=False)) if allx is not None else math.nan,
            "inputs": xs,
        }
    return res


# -- correctness against oracles ------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda: mlp("tanh"), lambda: mlp("sigmoid", depth=8, dtype="float64"),
                                  FunctionalActivations, ReusedModule, ResidualBNCNN, TinyTransformer,
                                  LSTMModel, TiedWeights, FrozenLayers],
                         ids=["mlp", "mlp_float64", "functional", "reused", "resnet_bn", "transformer", "lstm",
                              "tied", "frozen"])
def test_grad_norms_and_error_signals_match_autograd(make):
    model = make()
    dtype = next(model.parameters()).dtype
    x, y = model.example() if hasattr(model, "example") else (torch.randn(16, 6, dtype=dtype),
                                                              torch.randint(0, 5, (16,)))
    with watch(model) as probe:
        loss = one_step(model, probe, x, y)
    trace = probe.trace
    ref = oracle(model, x, y, trace.layer_names)
    row = {m: trace[m][0] for m in LAYER_METRICS}
    layout = probe._layout
    for i, layer in enumerate(layout.layers):
        w = [p.grad for p in layer.weights if p.grad is not None]
        b = [p.grad for p in layer.biases if p.grad is not None]
        expect_w = math.sqrt(sum(float(g.norm()) ** 2 for g in w)) if w else math.nan
        expect_b = math.sqrt(sum(float(g.norm()) ** 2 for g in b)) if b else math.nan
        np.testing.assert_allclose(row["grad_norm"][i], expect_w, rtol=1e-5, err_msg=layer.name)
        np.testing.assert_allclose(row["bias_grad_norm"][i], expect_b, rtol=1e-5, err_msg=layer.name)
        for metric in ("delta_rms", "input_grad_rms", "act_mean"):
            np.testing.assert_allclose(row[metric][i], ref[layer.name][metric], rtol=1e-5, atol=1e-7,
                                       err_msg=f"{layer.name} {metric}")
        np.testing.assert_allclose(row["act_std"][i], ref[layer.name]["act_std"], rtol=1e-4,
                                   err_msg=f"{layer.name} act_std")
    every = [p.grad for p in model.parameters() if p.grad is not None]  # de-duplicated (tied weights)
    np.testing.assert_allclose(trace["global_grad_norm"][0],
                               math.sqrt(sum(float(g.norm()) ** 2 for g in every)), rtol=1e-5)
    assert trace["loss"][0] == pytest.approx(float(loss.detach()))


def test_activation_statistics_match_direct_computation():
    model = FunctionalActivations()
    x, y = model.example(batch=64)
    with torch.no_grad():  # make some ReLU units dead for every sample: a real dead fraction
        model.l0.bias[:3] = -100.0
        model.l1.bias[:6] = 12.0  # and push half the sigmoid units into saturation
    with watch(model) as probe:
        one_step(model, probe, x, y)
    trace = probe.trace
    assert [layer.activation for layer in trace.layers] == list(FunctionalActivations.ACTIVATIONS)
    ref = oracle(model, x, y, trace.layer_names)
    for i, layer in enumerate(trace.layers):
        xin = ref[layer.name]["inputs"][0]
        dead = float((xin == 0).all(0).double().mean())
        assert trace["dead"][0, i] == pytest.approx(dead), layer.name
        if layer.activation is None:
            assert np.isnan(trace["saturated"][0, i]) and np.isnan(trace["act_deriv_rms"][0, i])
            continue
        act = activations.get(layer.activation)
        if act.relu_family:
            slope = 0.2 if layer.activation == "leaky_relu" else 0.0
            deriv = torch.where(xin > 0, 1.0, slope)
        elif act.deriv_from_output is not None:
            deriv = act.deriv_from_output(xin)
        else:  # gelu: phi' of the pre-activation, which autograd saved
            deriv = act.deriv(model.l4(ref["l4"]["inputs"][0].float()).double(), 0.0)
        expect = float(deriv.detach().square().mean().sqrt())
        assert trace["act_deriv_rms"][0, i] == pytest.approx(expect, rel=1e-5)
        assert trace["saturated"][0, i] == pytest.approx(float(act.saturated(xin).double().mean()))
    assert trace["dead"][0, 1] >= 3 / 12  # the planted dead units
    assert trace["saturated"][0, 2] >= 0.5  # the planted saturation, seen by l2 (sigmoid input)


class PaddedConvs(nn.Module):
    """TensorFlow-style "same" padding between an activation and the convolution it feeds (HF MobileNet)."""

    def __init__(self, activation) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c0, self.c1 = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 3, stride=2)
        self.act = activation

    def forward(self, x):
        return self.c1(F.pad(self.act(self.c0(x)), (0, 1, 0, 1))).mean((2, 3))


@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
def test_activation_statistics_are_those_of_the_activation_inside_zero_padding(activation):
    """The padded border is not the activation's output: a sigmoid is seen (phi', saturation) and the
    border's zeros are not dead ReLU units (they used to make every border position of every map dead)."""
    model = PaddedConvs(getattr(torch, activation))
    x = torch.randn(16, 3, 10, 10)
    with watch(model) as probe:
        one_step(model, probe, x, torch.randint(0, 4, (16,)))
    t, i = probe.trace, probe.trace.layer_names.index("c1")
    assert t.layers[i].activation == activation
    h = getattr(torch, activation)(model.c0(x)).detach().double()  # what the activation produced, unpadded
    assert t["act_mean"][0, i] == pytest.approx(float(h.mean()), rel=1e-5)
    assert t["act_std"][0, i] == pytest.approx(float(h.std(unbiased=False)), rel=1e-5)
    assert t["dead"][0, i] == pytest.approx(float((h.flatten(1) == 0).all(0).double().mean()))
    assert t["dead"][0, i] < 0.1  # with the border: >= 1 - 8*8/(9*9) = 21% of the units, always 0
    act = activations.get(activation)
    deriv = act.deriv_from_output(h) if act.deriv_from_output is not None else (h > 0).double()
    assert t["act_deriv_rms"][0, i] == pytest.approx(float(deriv.square().mean().sqrt()), rel=1e-5)
    src = graddoctor.probe.stats.activation_of(F.pad(torch.sigmoid(x.requires_grad_()), (1, 2)))
    assert src.name == "sigmoid" and src.pad == (1, 2)
    assert graddoctor.probe.stats.activation_of(F.pad(torch.sigmoid(x), (-1, 0))) is None  # a crop: unknown


def test_update_ratio_is_measured_around_the_optimizer_step():
    model = mlp("relu")
    x, y = torch.randn(32, 6), torch.randint(0, 5, (32,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = [layer.weight.detach().clone() for layer in model.modules() if isinstance(layer, nn.Linear)]
    with watch(model, optimizer=opt) as probe:  # no probe.step: the optimizer ends each step
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    after = [layer.weight.detach() for layer in model.modules() if isinstance(layer, nn.Linear)]
    expect = [float((a - b).norm() / b.norm()) for a, b in zip(after, before)]
    np.testing.assert_allclose(probe.trace["update_ratio"][0], expect, rtol=1e-5)
    np.testing.assert_allclose(probe.trace["weight_rms"][0],
                               [float(b.square().mean().sqrt()) for b in before], rtol=1e-5)
    assert np.isnan(probe.trace["loss"][0])  # unknown: probe.step(loss) was not called


class ClippingSGD(torch.optim.SGD):
    """An optimizer subclass whose step() does its own work, then calls super().step()."""

    def step(self, closure=None):
        torch.nn.utils.clip_grad_norm_([p for g in self.param_groups for p in g["params"]], 1e3)
        return super().step(closure)


def test_an_optimizer_subclass_calling_super_step_is_one_recorded_step():
    # torch wraps step() with the hook calls per class it has instantiated: once a plain SGD
    # exists too, both ClippingSGD.step and SGD.step fire the hooks, the inner inside the outer
    model = mlp("tanh")
    torch.optim.SGD(model.parameters(), lr=0.1)
    opt = ClippingSGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 6), torch.randint(0, 5, (32,))
    with watch(model, optimizer=opt) as probe:
        for _ in range(3):
            before = [m.weight.detach().clone() for m in model.modules() if isinstance(m, nn.Linear)]
            one_step(model, probe, x, y, opt)
    after = [m.weight.detach() for m in model.modules() if isinstance(m, nn.Linear)]
    assert list(probe.trace.steps) == [0, 1, 2]  # not two recorded steps per real one
    expect = [float((a - b).norm() / b.norm()) for a, b in zip(after, before)]
    np.testing.assert_allclose(probe.trace["update_ratio"][-1], expect, rtol=1e-5)
    assert np.isfinite(probe.trace["loss"]).all() and probe._step_frame is None


def test_train_loop_records_every_step_with_its_loss():
    data = graddoctor.from_tensors(torch.randn(96, 6), torch.randint(0, 5, (96,)), val_fraction=0.25)
    model = mlp("tanh")
    config = graddoctor.TrainConfig(epochs=2, batch_size=24, lr=0.05)
    with watch(model) as probe:
        hist = graddoctor.train(model, data, config, probe=probe, progress_bar=False)
    trace = probe.trace
    assert len(trace) == len(hist.step_loss) == 6
    np.testing.assert_allclose(trace["loss"], hist.step_loss, rtol=1e-6)
    assert np.isfinite(trace["update_ratio"]).all() and np.isfinite(trace["delta_rms"]).all()
    assert trace.meta["optimizer"] == {"type": "SGD", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0}


def test_train_divergence_is_recorded_with_its_nan_loss():
    data = graddoctor.from_tensors(torch.randn(64, 6) * 10, torch.randint(0, 5, (64,)), val_fraction=0.25)
    model = mlp("relu")
    config = graddoctor.TrainConfig(epochs=20, batch_size=16, lr=1e4, momentum=0.0)
    with watch(model) as probe:
        hist = graddoctor.train(model, data, config, probe=probe, progress_bar=False)
    trace = probe.trace
    assert hist.diverged_at is not None and len(trace) == hist.diverged_at + 1
    assert trace["nonfinite_loss"][-1] == 1 and (trace["nonfinite_loss"][:-1] == 0).all()
    assert np.isnan(trace["update_ratio"][-1]).all()  # the optimizer did not step on a NaN loss


# -- leaves no trace ------------------------------------------------------------------------
def hook_state(model: nn.Module, opt=None) -> list:
    state = [(name, attr, tuple(v.keys())) for name, m in model.named_modules()
             for attr, v in vars(m).items() if "hook" in attr and isinstance(v, dict)]
    if opt is not None:
        state += [(a, tuple(getattr(opt, a).keys())) for a in ("_optimizer_step_pre_hooks",
                                                               "_optimizer_step_post_hooks")]
    return state


@pytest.mark.parametrize("stats", ["norms", "full"])
def test_exit_restores_hooks_modes_and_parameters_even_when_training_raises(stats):
    model = ResidualBNCNN()
    model.blocks[1].eval()  # a mixed train/eval state must come back as it was
    x, y = model.example()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    hooks, modes = hook_state(model, opt), [m.training for m in model.modules()]
    params = [p.detach().clone() for p in model.parameters()]
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(RuntimeError, match="boom"), watch(model, stats=stats, optimizer=opt) as probe:
        model.train()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        assert hook_state(model, opt) != hooks  # hooks were attached
        raise RuntimeError("boom")
    assert hook_state(model, opt) == hooks
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))
    assert [p.requires_grad for p in model.parameters()] == flags
    assert len(probe.trace) == 0
    with watch(model) as again:  # the model can be watched again
        one_step(model, again, x, y)
    assert len(again.trace) == 1


def test_watching_twice_is_an_error_not_doubled_hooks():
    model = SequentialInModuleDict()
    with watch(model):
        with pytest.raises(GradDoctorError, match="already being watched"):
            watch(model)
        with pytest.raises(GradDoctorError, match="already being watched"):
            watch(model.blocks["encoder"])  # a part of a watched model counts too
    watch(model).close()


@pytest.mark.parametrize("kwargs, match", [
    ({"stats": "fast"}, "unknown stats preset 'fast'; choose one of: norms, full"),
    ({"every": 0}, "every must be a whole number >= 1"),
    ({"every": 2.5}, "every must be a whole number >= 1"),
    ({"optimizer": "adam"}, "optimizer must be a torch.optim.Optimizer"),
])
def test_bad_arguments_are_rejected_at_once(kwargs, match):
    with pytest.raises(GradDoctorError, match=match):
        watch(mlp(), **kwargs)


def test_model_without_parameters_is_a_clear_error():
    with pytest.raises(GradDoctorError, match="NoParameters has no parameters"):
        watch(NoParameters())
    with pytest.raises(GradDoctorError, match=r"needs a torch\.nn\.Module"):
        watch(lambda x: x)


def test_closed_probe_refuses_more_steps():
    model = mlp()
    probe = watch(model)
    probe.close()
    with pytest.raises(GradDoctorError, match="closed"):
        probe.step()


# -- any architecture -----------------------------------------------------------------------
EXPECTED_LAYERS = {
    "TiedWeights": ["embed", "hidden", "decode"],
    "ReusedModule": ["inp", "shared", "head"],
    "FrozenLayers": ["layers.0", "layers.1", "layers.2", "head"],
    "NoGradBranch": ["side", "main", "head"],
    "FunctionalActivations": ["l0", "l1", "l2", "l3", "l4", "head"],
    "SequentialInModuleDict": ["blocks.encoder.0", "blocks.encoder.2", "blocks.head.1"],  # forward order
    "LSTMModel": ["lstm", "head"],
    "TinyTransformer": ["embed"] + [f"encoder.layers.{i}.{n}" for i in range(2)
                                    for n in ("self_attn", "norm1", "linear1", "linear2", "norm2")] + ["head"],
    "ResidualBNCNN": ["stem"] + [f"blocks.{i}.{n}" for i in range(2)
                                 for n in ("conv1", "bn1", "conv2", "bn2")] + ["head"],
}


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_every_fixture_model_records_sensible_values(cls):
    model = cls()
    x, y = model.example()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    with watch(model, optimizer=opt) as probe:
        for _ in range(3):
            one_step(model, probe, x, y, opt)
    trace = probe.trace
    assert trace.layer_names == EXPECTED_LAYERS[cls.__name__]
    assert len(trace) == 3 and list(trace.steps) == [0, 1, 2]
    assert np.isfinite(trace["loss"]).all() and (trace["global_grad_norm"] > 0).all()
    assert (trace["nonfinite_act"][np.isfinite(trace["nonfinite_act"])] == 0).all()
    trained = [any(p.requires_grad and p.grad is not None for p in layer.weights)
               for layer in probe._layout.layers]
    g = trace["grad_norm"]
    assert (g[:, trained] > 0).all() and np.isfinite(g[:, trained]).all()
    assert np.isnan(g[:, [not t for t in trained]]).all()
    assert np.isfinite(trace["weight_rms"][:, [layer.numel > 0 for layer in trace.layers]]).all()
    ratio = trace["update_ratio"][:, trained]
    assert ((ratio > 0) & (ratio < 1)).all()
    d = trace["delta_rms"]
    assert np.isfinite(d[:, -1]).all() and (d[:, -1] > 0).all()  # the head always has an error signal
    assert trace.layers[-1].out_size == (TiedWeights.vocab if cls is TiedWeights else 5)
    assert all(layer.in_size > 0 for layer in trace.layers)


def test_fixture_edge_cases_are_handled_on_purpose():
    def run(model):
        x, y = model.example()
        with watch(model) as probe:
            one_step(model, probe, x, y)
        return probe

    tied = run(TiedWeights())  # the shared weight is counted once, for its first user
    assert tied.trace.layers[0].numel == TiedWeights.vocab * TiedWeights.dim
    assert tied.trace.layers[2].numel == 0 and np.isnan(tied.trace["grad_norm"][0, 2])
    assert np.isfinite(tied.trace["bias_grad_norm"][0, 2])

    frozen = run(FrozenLayers())  # frozen layers are layers: weights, error signal, no gradient
    assert np.isnan(frozen.trace["grad_norm"][0, [0, 2]]).all()
    assert np.isfinite(frozen.trace["delta_rms"][0, 2]) and np.isnan(frozen.trace["delta_rms"][0, 0])

    branch = run(NoGradBranch())  # computed under no_grad: no error signal, no gradient
    assert np.isnan(branch.trace["delta_rms"][0, 0]) and np.isnan(branch.trace["grad_norm"][0, 0])
    assert np.isfinite(branch.trace["delta_rms"][0, 1])

    transformer = run(TinyTransformer())  # out_proj (run functionally) belongs to its attention layer
    attn = transformer.model.encoder.layers[0].self_attn
    assert transformer.trace.layers[1].numel == attn.in_proj_weight.numel() + attn.out_proj.weight.numel()


# -- every / presets / failures ------------------------------------------------------------
def test_every_k_records_every_kth_step_and_hooks_only_then():
    model = mlp()
    x, y = torch.randn(16, 6), torch.randint(0, 5, (16,))
    n_hooks = []
    with watch(model, every=3) as probe:
        for _ in range(8):
            n_hooks.append(sum(len(m._forward_hooks) for m in model.modules()))
            one_step(model, probe, x, y)
    assert list(probe.trace.steps) == [0, 3, 6]
    # 5 Linear layers; nothing attached in between; on the first step the structure recorder's
    # hooks (probe/structure.py) ride along, once
    assert n_hooks == [10, 0, 0, 5, 0, 0, 5, 0]


def test_norms_preset_has_no_module_hooks_after_the_first_step():
    model = mlp()
    x, y = torch.randn(16, 6), torch.randint(0, 5, (16,))
    with watch(model, stats="norms") as full_order:
        one_step(model, full_order, x, y)
        one_step(model, full_order, x, y)
        assert sum(len(m._forward_hooks) for m in model.modules()) == 0
    trace = full_order.trace
    assert trace.layer_names == ["body.0.linear", "body.1.linear", "body.2.linear", "body.3.linear", "head"]
    assert np.isfinite(trace["grad_norm"]).all() and np.isnan(trace["delta_rms"]).all()


def test_one_host_copy_per_recorded_step(monkeypatch):
    from graddoctor.probe import collect

    # the device path, as on a GPU (on CPU tensors, reading a small result is no sync: stats.py host=True)
    monkeypatch.setattr(collect, "HOST_READS", False)
    calls = []
    real = record.fetch
    monkeypatch.setattr(record, "fetch", lambda values: calls.append(len(values)) or real(values))
    model = mlp()
    x, y = torch.randn(16, 6), torch.randint(0, 5, (16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with watch(model, every=2, optimizer=opt) as probe:
        monkeypatch.setattr(Tensor, "item", lambda self: pytest.fail("no .item() inside the probe"))
        for _ in range(4):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert probe._record is not None and not probe._record.values  # nothing held between steps
    # two recorded steps, and at close the every-step checks of step 3 (after the last recorded one)
    assert len(calls) == 3 and len(probe.trace) == 2


def test_backward_that_raises_records_nothing_half_done():
    class Boom(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            return t.clone()

        @staticmethod
        def backward(ctx, g):
            raise RuntimeError("backward failed")

    model = mlp()
    x, y = torch.randn(16, 6), torch.randint(0, 5, (16,))
    with watch(model) as probe:
        loss = F.cross_entropy(model.head(Boom.apply(model.body(x))), y)  # head's hook fires first
        with pytest.raises(RuntimeError, match="backward failed"):
            loss.backward()
        probe.step(loss)
        assert len(probe.trace) == 0
        model.zero_grad()
        one_step(model, probe, x, y)
    assert list(probe.trace.steps) == [1]


def test_nan_loss_is_recorded_not_raised():
    model = mlp("relu")
    x, y = torch.randn(16, 6), torch.randint(0, 5, (16,))
    x[0, 0] = float("nan")
    with watch(model) as probe:
        one_step(model, probe, x, y)
    t = probe.trace
    assert t["nonfinite_loss"][0] == 1 and np.isnan(t["loss"][0])
    assert t["nonfinite_grad"][0, 0] > 0 and t["nonfinite_act"][0, 0] > 0
    assert np.isnan(t["global_grad_norm"][0])


def test_first_forward_order_not_definition_order():
    class Backwards(nn.Module):
        def __init__(self):
            super().__init__()
            self.late = nn.Linear(4, 3)
            self.early = nn.Linear(3, 4)

        def forward(self, x):
            return self.late(torch.relu(self.early(x)))

    model = Backwards()
    with watch(model) as probe:
        loss = model(torch.randn(8, 3)).square().mean()
        loss.backward()
        probe.step(loss)
    assert probe.trace.layer_names == ["early", "late"]
    assert probe.trace.layers[1].activation == "relu"


# -- the Trace it fills ---------------------------------------------------------------------
def test_trace_save_load_round_trip(tmp_path):
    model = ResidualBNCNN()
    x, y = model.example()
    with watch(model, every=2) as probe:
        for _ in range(5):
            one_step(model, probe, x, y)
    path = probe.trace.save(tmp_path / "run.npz")
    back = Trace.load(path)
    assert back.layers == probe.trace.layers and back.meta == probe.trace.meta
    assert list(back.steps) == [0, 2, 4]
    for metric in LAYER_METRICS + ("loss", "global_grad_norm"):
        np.testing.assert_array_equal(back[metric], probe.trace[metric])
    df = back.to_dataframe()
    assert len(df) == 3 * len(back.layers) and set(LAYER_METRICS) <= set(df.columns)


def test_trace_memory_for_1000_steps_x_100_layers():
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(100)])
    x = torch.randn(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    with watch(model, stats="norms", optimizer=opt) as probe:
        for _ in range(1000):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    assert probe.trace["grad_norm"].shape == (1000, 100)
    # float64 x 1024 (capacity) x (step index + 100 layers x metrics + step metrics): 13 MB
    assert probe.trace.nbytes() == 8 * 1024 * (1 + 100 * len(LAYER_METRICS) + len(STEP_METRICS))


def test_low_precision_model_is_reduced_in_float32():
    model = mlp("relu").to(torch.bfloat16)
    x, y = torch.randn(16, 6, dtype=torch.bfloat16), torch.randint(0, 5, (16,))
    with watch(model) as probe:
        one_step(model, probe, x, y)
    t = probe.trace
    assert np.isfinite(t["delta_rms"]).all() and np.isfinite(t["act_std"][0, 1:]).all()
    np.testing.assert_allclose(t["grad_norm"][0, 0], float(model.body[0].linear.weight.grad.float().norm()),
                               rtol=1e-2)


def test_docs_measure_page_runs_as_shown(tmp_path, monkeypatch):
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "docs" / "measure.md").read_text()
    section = readme.split("<!-- section:probe -->", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "docs/measure.md", "exec"), scope)
    trace = scope["trace"]
    assert trace["delta_rms"].shape == (20, 11) and (tmp_path / "run.npz").exists()
    assert np.nanmedian(trace.gain()) < 0.5  # a 10-layer sigmoid net: the error signal shrinks
