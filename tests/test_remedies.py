"""Each remedy on its own, on any nn.Module: what it changes, what it leaves alone, and why not."""
import copy
import math
import re

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from graddoctor import NetSpec, TrainConfig, build
from graddoctor import data as data_mod
from graddoctor.diagnose.findings import Cause, Diagnosis, Finding
from graddoctor.errors import GradDoctorError
from graddoctor.remedies import REMEDIES, Patient, Sample, get
from graddoctor.remedies import apply_changes as gd_apply
from graddoctor.remedies.candidates import pairs, ranked_labels, singles
from graddoctor.remedies.recipe import supervised_step

WIDTH, DEPTH = 32, 8
STEP = supervised_step(F.cross_entropy)


def DeepSigmoidSeq(init_std: float | None = None) -> nn.Sequential:
    """A plain nn.Sequential: (Linear, Sigmoid) x DEPTH, then a Linear head."""
    layers = []
    for i in range(DEPTH):
        layers += [nn.Linear(16 if i == 0 else WIDTH, WIDTH), nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(WIDTH, 4))
    if init_std is not None:
        for m in model:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, init_std)
    return model


class FunctionalSigmoidMLP(nn.Module):
    """Activations applied with torch.sigmoid / x.tanh() in forward(): no module to replace."""

    def __init__(self, depth: int = DEPTH) -> None:
        super().__init__()
        self.fc = nn.ModuleList(nn.Linear(16 if i == 0 else WIDTH, WIDTH) for i in range(depth))
        self.head = nn.Linear(WIDTH, 4)

    def forward(self, x):
        for i, fc in enumerate(self.fc):
            x = torch.sigmoid(fc(x)) if i % 2 == 0 else fc(x).tanh()
        return self.head(x)


class FunctionalReLUSmallInit(nn.Module):
    """The issue's case: F.relu in forward (no activation module at all), weights N(0, 0.01^2)."""

    def __init__(self, depth: int = 30) -> None:
        super().__init__()
        self.fc = nn.ModuleList(nn.Linear(16 if i == 0 else WIDTH, WIDTH) for i in range(depth))
        self.head = nn.Linear(WIDTH, 4)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)

    def forward(self, x):
        for fc in self.fc:
            x = F.relu(fc(x))
        return self.head(x)


class SqueezeExcite(nn.Module):
    """A sigmoid used as a gate (x * sigmoid(s)), and a GELU written with tanh: neither is an activation."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.gate, self.fc2 = nn.Linear(16, WIDTH), nn.Linear(16, WIDTH), nn.Linear(WIDTH, 4)

    def forward(self, x):
        h = self.fc1(x)
        h = 0.5 * h * (1 + torch.tanh(0.79788456 * (h + 0.044715 * h ** 3)))  # GPT-2's gelu_new
        return self.fc2(h * torch.sigmoid(self.gate(x)))


class PreLNBlock(nn.Module):
    """x + W2 relu(W1 LN(x)): already residual."""

    def __init__(self) -> None:
        super().__init__()
        self.ln, self.fc1, self.fc2 = nn.LayerNorm(WIDTH), nn.Linear(WIDTH, WIDTH), nn.Linear(WIDTH, WIDTH)

    def forward(self, x, scale: float = 1.0):
        return x + scale * self.fc2(F.relu(self.fc1(self.ln(x))))


class PostLNBlock(PreLNBlock):
    """LN(x + f(x)) (BERT-style): residual too."""

    def forward(self, x, scale: float = 1.0):
        return self.ln(x + self.fc2(F.relu(self.fc1(x))))


class NoSkipBlock(PreLNBlock):
    """The same block with its skip removed: W2 relu(W1 LN(x))."""

    def forward(self, x, scale: float = 1.0):
        return self.fc2(F.relu(self.fc1(self.ln(x))))


class NormExitBlock(PreLNBlock):
    """x + LN(W2 relu(W1 x)): a branch that ends in a norm (ResNet-style, post-branch norm)."""

    def forward(self, x, scale: float = 1.0):
        return x + self.ln(self.fc2(F.relu(self.fc1(x))))


class Stack(nn.Module):
    """A stack of blocks over features (batch, features) or sequences (batch, length, features), then a head."""

    def __init__(self, block: type, depth: int = 6) -> None:
        super().__init__()
        self.inp = nn.Linear(16, WIDTH)
        self.blocks = nn.ModuleList(block() for _ in range(depth))
        self.head = nn.Linear(WIDTH, 4)

    def forward(self, x):
        h = self.inp(x)
        for b in self.blocks:
            h = b(h, scale=1.0)
        return self.head(h.mean(1) if h.dim() == 3 else h)


class ConvTanh(nn.Module):
    """Conv2d + F.tanh, not in a Sequential."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(1 if i == 0 else 8, 8, 3, padding=1) for i in range(3))
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        for c in self.convs:
            x = torch.tanh(c(x))
        return self.head(x.mean((2, 3)))


class PaddedConvSigmoid(nn.Module):
    """Conv2d -> nn.Sigmoid, then zero padding before the next Conv2d (TensorFlow "same" padding, as in
    Hugging Face's MobileNet and EfficientNet)."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(1 if i == 0 else 8, 8, 3) for i in range(3))
        self.acts = nn.ModuleList(nn.Sigmoid() for _ in range(3))
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        for c, a in zip(self.convs, self.acts):
            x = a(c(F.pad(x, (1, 1, 1, 1))))
        return self.head(x.mean((2, 3)))


class Half(nn.Module):
    """A float16 MLP (inputs cast to the parameters' dtype in forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, WIDTH), nn.ReLU(), nn.Linear(WIDTH, 4)).half()

    def forward(self, x):
        return self.net(x.to(self.net[0].weight.dtype)).float()


def sample_of(data, n: int = 8, step=STEP) -> Sample:
    return Sample((data.x_train[:n], data.y_train[:n]), step, data, budget_steps=60)


@pytest.fixture(scope="module")
def data():
    return data_mod.gaussians(n=256, dim=16, classes=4, seed=0)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return data_mod.from_tensors(torch.randn(64, 1, 8, 8, generator=g), torch.randint(0, 4, (64,), generator=g))


@pytest.fixture(scope="module")
def sequences():
    g = torch.Generator().manual_seed(0)
    return data_mod.from_tensors(torch.randn(64, 5, 16, generator=g), torch.randint(0, 4, (64,), generator=g))


def grad_ratio(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Oracle by plain autograd: ||dL/dW|| of the first weight layer / the last hidden one's."""
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    w = [m.weight.grad.norm().item() for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return w[0] / w[-2]


def untouched(model: nn.Module, apply) -> object:
    """Run apply() and assert the model's weights, buffers, structure and hooks did not change."""
    state, text, hooks = copy.deepcopy(model.state_dict()), repr(model), len(model._forward_hooks)
    out = apply()
    assert repr(model) == text and len(model._forward_hooks) == hooks
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)
    return out


# Every remedy, on a model it applies to.
CASES = {label: DeepSigmoidSeq for label in REMEDIES}
CASES.update({"swap_activation(prelu)": DeepSigmoidSeq, "reinit(library)": lambda: DeepSigmoidSeq(0.5),
              "loss_scale": Half, "bf16": Half, "tune_optimizer(momentum)": DeepSigmoidSeq,
              "scale_branches": lambda: Stack(PreLNBlock), "layer_scale": lambda: Stack(PreLNBlock),
              "zero_init_norms": lambda: Stack(NormExitBlock), "reset_norms": lambda: small_norms(Stack(PreLNBlock))})


def small_norms(model: nn.Module) -> nn.Module:
    """EfficientNet's library init: norm weights drawn from N(0, 0.02) instead of 1."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                nn.init.normal_(m.weight, 0, 0.02)
    return model


@pytest.mark.parametrize("label", list(REMEDIES))
def test_every_remedy_leaves_the_original_untouched_and_builds(label, data):
    torch.manual_seed(0)
    model = CASES[label]()
    patient, sample = Patient(TrainConfig(), model=model), sample_of(data)
    remedy = get(label)
    assert remedy.why_not(patient, None, sample) == ""  # gaussians are not standardised: all apply
    new = untouched(model, lambda: remedy.apply(patient, sample))
    assert new.changes and new.applied == (label,) and patient.changes == ()
    assert not any(c.note for c in new.changes)
    net = untouched(model, lambda: new.build(0))
    assert net(data.x_train[:5]).shape == (5, 4)
    assert net is not model and all(p is not q for p in net.parameters() for q in model.parameters())


def test_swap_activation_relu_he_restores_the_gradient(data):
    torch.manual_seed(0)
    model = DeepSigmoidSeq()
    x, y = data.x_train[:128], data.y_train[:128]
    new = get("swap_activation(relu)").apply(Patient(TrainConfig(), model=model), sample_of(data)).build(0)
    assert sum(isinstance(m, nn.Sigmoid) for m in new.modules()) == 0
    assert sum(isinstance(m, nn.ReLU) for m in new.modules()) == DEPTH
    for i in range(DEPTH):  # every layer feeding a ReLU now has He's std sqrt(2/fan_in)
        fan_in = 16 if i == 0 else WIDTH
        assert new[2 * i].weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.2)
    assert grad_ratio(model, x, y) < 1e-3  # 8 sigmoid layers: the first layer's gradient has all but vanished
    assert 0.1 < grad_ratio(new, x, y) < 10  # ReLU + He: the same order of magnitude in every layer


def test_swap_to_selu_uses_lecun_init(data):
    new = get("swap_activation(selu)").apply(Patient(TrainConfig(), model=DeepSigmoidSeq()), sample_of(data))
    net = new.build(0)
    assert sum(isinstance(m, nn.SELU) for m in net.modules()) == DEPTH
    assert net[2].weight.std().item() == pytest.approx(math.sqrt(1 / WIDTH), rel=0.2)


def test_functional_activations_are_swapped_during_forward(data):
    torch.manual_seed(0)
    model = FunctionalSigmoidMLP()
    x, y = data.x_train[:128], data.y_train[:128]
    new = get("swap_activation(relu)").apply(Patient(TrainConfig(), model=model), sample_of(data))
    swaps = [c for c in new.changes if c.op == "function"]
    assert [c.module_path for c in swaps] == [f"fc.{i}" for i in range(DEPTH)]
    assert {c.args["function"] for c in swaps} == {"sigmoid", "tanh"}
    net = new.build(0)
    assert repr(net) == repr(model)  # no module changed: the functions are substituted
    with torch.no_grad():  # oracle: the same weights through an explicit ReLU forward
        h = x
        for fc in net.fc:
            h = torch.relu(fc(h))
        assert torch.equal(net(x), net.head(h))
    assert grad_ratio(model, x, y) < 1e-3 and 0.1 < grad_ratio(net, x, y) < 10


def test_an_activation_feeding_a_layer_through_zero_padding_is_swapped(images):
    torch.manual_seed(0)
    model = PaddedConvSigmoid()
    new = get("swap_activation(relu)").apply(Patient(TrainConfig(), model=model), sample_of(images))
    swapped = [c.module_path for c in new.changes if c.op == "set_module"]
    assert swapped == ["acts.0", "acts.1"]  # acts.2 feeds the mean and the head, no weight layer through a pad
    assert [c.module_path for c in new.changes if c.op == "reinit"] == ["convs.0", "convs.1"]
    assert isinstance(new.build(0).acts[0], nn.ReLU)


def test_gates_and_functions_inside_other_functions_are_not_activations(data):
    patient, sample = Patient(TrainConfig(), model=SqueezeExcite()), sample_of(data)
    why = get("swap_activation(relu)").why_not(patient, None, sample)
    assert "gates" in why


def test_prelu_cannot_replace_a_functional_activation_and_says_why(data):
    why = get("swap_activation(prelu)").why_not(Patient(TrainConfig(), model=FunctionalSigmoidMLP()), None,
                                                sample_of(data))
    assert "needs a module" in why


def test_reinit_uses_the_activation_each_layer_actually_feeds(data):
    torch.manual_seed(0)
    model = FunctionalReLUSmallInit()
    x, y = data.x_train[:128], data.y_train[:128]
    new = get("reinit").apply(Patient(TrainConfig(), model=model), sample_of(data))
    assert all(c.args["activation"] == "relu" for c in new.changes if c.module_path.startswith("fc."))
    assert [c.args["init"] for c in new.changes][-1] == "xavier_normal"  # the head feeds no activation
    net = new.build(0)
    assert net.fc[5].weight.std().item() == pytest.approx(math.sqrt(2 / WIDTH), rel=0.2)  # He, not Glorot
    assert grad_ratio(model, x, y) < 1e-12 and 0.1 < grad_ratio(net, x, y) < 10
    again = Patient(TrainConfig(), model=net)
    assert "already" in get("reinit").why_not(again, None, sample_of(data))


def test_reinit_small_init_gets_glorot_for_sigmoid(data):
    new = get("reinit").apply(Patient(TrainConfig(), model=DeepSigmoidSeq(init_std=0.01)), sample_of(data))
    assert len(new.changes) == DEPTH + 1  # every Linear, the head (Glorot) included
    net = new.build(0)
    assert net[2].weight.std().item() == pytest.approx(math.sqrt(2 / (2 * WIDTH)), rel=0.15)
    assert all(torch.count_nonzero(m.bias) == 0 for m in net if isinstance(m, nn.Linear))


def test_reinit_orthogonal_is_orthogonal(data):
    net = get("reinit(orthogonal)").apply(Patient(TrainConfig(), model=DeepSigmoidSeq(0.01)), sample_of(data)).build(0)
    w = net[2].weight.detach()
    assert torch.allclose(w @ w.T, nn.init.calculate_gain("sigmoid") ** 2 * torch.eye(WIDTH), atol=1e-5)


def test_reinit_library_restores_the_default_init(data):
    torch.manual_seed(0)
    model = DeepSigmoidSeq()
    default = model[2].weight.std().item()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.01)
    patient = Patient(TrainConfig(), model=model)
    assert get("reinit(library)").why_not(patient, None, sample_of(data)) == ""
    net = get("reinit(library)").apply(patient, sample_of(data)).build(0)
    assert net[2].weight.std().item() == pytest.approx(default, rel=0.2)
    healthy = Patient(TrainConfig(), model=DeepSigmoidSeq())
    assert "library" in get("reinit(library)").why_not(healthy, None, sample_of(data))


def test_reinit_reports_layers_it_has_no_rule_for():
    class EmbeddingTanh(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 16)
            self.body = nn.Sequential(nn.Linear(16, WIDTH), nn.Tanh(), nn.Linear(WIDTH, 4))

        def forward(self, x):
            return self.body(self.emb(x))

    tokens = data_mod.from_tensors(torch.randint(0, 10, (32,)), torch.randint(0, 4, (32,)))
    new = get("reinit(orthogonal)").apply(Patient(TrainConfig(), model=EmbeddingTanh()), sample_of(tokens))
    notes = [c for c in new.changes if c.note]
    assert [c.module_path for c in notes] == ["emb"] and "Embedding" in notes[0].note


def test_add_norm_normalises_each_preactivation_and_keeps_every_key(data):
    torch.manual_seed(0)
    model = DeepSigmoidSeq(init_std=1.0)  # huge pre-activations: saturated sigmoids
    new = get("add_norm").apply(Patient(TrainConfig(), model=model), sample_of(data)).build(0)
    norms = [m.gd_norm for m in new if isinstance(m, nn.Linear) and hasattr(m, "gd_norm")]
    assert len(norms) == DEPTH and all(isinstance(n, nn.BatchNorm1d) for n in norms)
    seen = []
    hooks = [n.register_forward_hook(lambda m, i, o: seen.append(o)) for n in norms]
    new.train()(data.x_train)
    for h in hooks:
        h.remove()
    for o in seen:
        assert abs(o.mean().item()) < 0.05 and o.std().item() == pytest.approx(1.0, abs=0.05)
    assert set(model.state_dict()) < set(new.state_dict())  # the user's keys, plus the norms'


def test_add_norm_fits_the_layer_conv_batchnorm_sequence_layernorm(images, sequences):
    conv = get("add_norm").apply(Patient(TrainConfig(), model=ConvTanh()), sample_of(images)).build(0)
    # the last conv's tanh feeds a pooling, not a layer: as the probe sees it, not an activation
    assert [type(c.gd_norm).__name__ for c in conv.convs[:2]] == ["BatchNorm2d"] * 2
    assert conv(images.x_train[:2]).shape == (2, 4)
    seq = nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4), nn.Flatten(), nn.Linear(20, 4))
    new = get("add_norm").apply(Patient(TrainConfig(), model=seq), sample_of(sequences)).build(0)
    assert isinstance(new[0].gd_norm, nn.LayerNorm) and new(sequences.x_train[:3]).shape == (3, 4)


def test_add_norm_leaves_normalised_layers_alone(data):
    spec = NetSpec(depth=4, width=16, in_shape=(16,), out_features=4, batchnorm="before_activation")
    patient = Patient(TrainConfig(), model=build(spec, seed=0))
    assert "normalised already" in get("add_norm").why_not(patient, None, sample_of(data))


def test_add_residual_wraps_same_shaped_blocks(data):
    torch.manual_seed(0)
    model = DeepSigmoidSeq()
    x, y = data.x_train[:128], data.y_train[:128]
    new = get("add_residual").apply(Patient(TrainConfig(), model=model), sample_of(data))
    skips = [c for c in new.changes if c.op == "skip"]
    assert len(skips) == DEPTH - 1  # the first block changes 16 -> 32 features: not wrapped
    assert skips[0].args["scale"] == pytest.approx(1 / math.sqrt(DEPTH - 1))
    net = new.build(0)
    assert repr(net) == repr(model)  # hooks: no module renamed or added
    assert grad_ratio(net, x, y) > 100 * grad_ratio(model, x, y)  # the skips carry the gradient


@pytest.mark.parametrize("block", [PreLNBlock, PostLNBlock])
def test_add_residual_never_wraps_a_block_that_has_a_skip(block, sequences):
    patient = Patient(TrainConfig(), model=Stack(block))
    assert "skip connections already" in get("add_residual").why_not(patient, None, sample_of(sequences))


def test_add_residual_restores_removed_skips(sequences):
    torch.manual_seed(0)
    model = Stack(NoSkipBlock)
    new = get("add_residual").apply(Patient(TrainConfig(), model=model), sample_of(sequences))
    assert [c.module_path for c in new.changes] == [f"blocks.{i}" for i in range(6)]
    net = new.build(0)
    x = sequences.x_train[:4]
    with torch.no_grad():  # oracle: x + a * block(x) around every block
        h = net.inp(x)
        for b in model.blocks:
            h = h + new.changes[0].args["scale"] * b(h)
        assert torch.allclose(net(x), net.head(h.mean(1)), atol=1e-6)


def test_add_residual_on_a_graddoctor_net_wraps_its_layers(data):
    spec = NetSpec(depth=6, width=16, in_shape=(16,), out_features=4, activation="tanh")
    new = get("add_residual").apply(Patient(TrainConfig(), model=build(spec, seed=0)), sample_of(data))
    assert [c.module_path for c in new.changes] == [f"body.{i}" for i in range(6)]
    assert new.build(0)(data.x_train[:3]).shape == (3, 4)


def test_training_remedies_change_the_config_or_the_step_settings(data):
    p = Patient(TrainConfig(lr=0.1, momentum=0.9), model=DeepSigmoidSeq())
    assert get("tune_optimizer(lr/10)").apply(p).config.lr == pytest.approx(0.01)
    assert get("tune_optimizer(lr*10)").apply(p).config.lr == pytest.approx(1.0)
    assert get("tune_optimizer(momentum)").apply(p).config.momentum == 0.0
    clipped = get("clip_gradients").apply(p)
    assert clipped.step_settings().clip_norm == 1.0 and p.step_settings().clip_norm is None
    assert "clipped at norm 1" in get("clip_gradients").why_not(clipped)
    own = Patient(TrainConfig(), model=DeepSigmoidSeq(), own_optimizer=True)  # the user's make_optimizer
    lower = get("tune_optimizer(lr/100)").apply(own)
    assert lower.settings.lr_scale == pytest.approx(0.01) and lower.config == own.config
    assert lower.changes[0].scope == "training"
    assert "make_optimizer" in get("tune_optimizer(momentum)").why_not(own)
    warm = get("warmup").apply(own, sample_of(data))
    assert warm.settings.warmup_steps == 12 and "warms up already" in get("warmup").why_not(warm)


def test_precision_remedies_need_float16(data):
    fp32 = Patient(TrainConfig(), model=DeepSigmoidSeq())
    assert "float16" in get("loss_scale").why_not(fp32, None, sample_of(data))
    assert "float16" in get("bf16").why_not(fp32, None, sample_of(data))
    half = Patient(TrainConfig(), model=Half())
    assert get("loss_scale").apply(half, sample_of(data)).settings.loss_scale
    net = get("bf16").apply(half, sample_of(data)).build(0)
    assert {p.dtype for p in net.parameters()} == {torch.bfloat16}


def test_normalize_inputs_standardises_what_the_model_sees():
    g = torch.Generator().manual_seed(0)
    raw = data_mod.from_tensors(255 * torch.rand(200, 16, generator=g) + 40, torch.randint(0, 4, (200,), generator=g))
    p = Patient(TrainConfig(), model=DeepSigmoidSeq())
    remedy = get("normalize_inputs")
    assert remedy.why_not(p, None, sample_of(raw)) == ""
    treated = remedy.apply(p, sample_of(raw))
    before = re.fullmatch(r"mean (\S+), std (\S+)", treated.changes[-1].before)  # the inputs' measured statistics
    mean, std = float(before.group(1)), float(before.group(2))
    assert mean == pytest.approx(40 + 255 / 2, rel=0.02) and std == pytest.approx(255 / math.sqrt(12), rel=0.02)
    net = treated.build(0)
    z = (raw.x_train - net.gd_input_mean) / net.gd_input_std
    assert z.mean(0).abs().max() < 1e-4 and torch.allclose(z.std(0), torch.ones(16), atol=1e-3)
    with torch.no_grad():
        assert torch.equal(net(raw.x_train[:3]), net[:](z[:3]))  # the hook, then the plain layers
    streamed = Sample((raw.x_train[:8], raw.y_train[:8]), STEP)  # no data set in memory
    assert "pipeline" in remedy.why_not(p, None, streamed)


def test_spec_remedies_return_new_specs(data):
    spec = NetSpec(depth=20, width=16, in_shape=(16,), out_features=4, activation="sigmoid", init="xavier_normal")
    p = Patient(TrainConfig(), spec=spec)
    got = {lab: r.apply(p, sample_of(data)).spec for lab, r in REMEDIES.items()
           if not r.why_not(p, None, sample_of(data))}
    assert got["swap_activation(relu)"].activation == "relu" and got["swap_activation(relu)"].init == "he_normal"
    assert got["swap_activation(selu)"].init == "lecun_normal"
    assert got["add_norm"].batchnorm == "before_activation"
    assert got["add_residual"].residual == 2 and got["add_residual"].residual_scale == pytest.approx(0.1 ** 0.5)
    assert "reinit" not in got  # xavier is already the right init for sigmoid
    assert spec.activation == "sigmoid" and spec.batchnorm == "none"  # frozen: unchanged


def test_unknown_remedy_names_the_choices():
    with pytest.raises(GradDoctorError, match="unknown remedy 'relu'; choose one of: bf16, swap_activation"):
        get("relu")


def _diagnosis(kind: str, *causes: str) -> Diagnosis:
    f = Finding(kind, "critical", ("0",), "test", {}, tuple(Cause(c, "") for c in causes), ())
    return Diagnosis([f], ["0"])


def test_candidates_follow_the_ranked_causes_and_say_why_not(data):
    d = _diagnosis("vanishing", "saturating_activation", "chain_product_depth")
    labels = ranked_labels(d)
    assert labels[:4] == [f"swap_activation({t})" for t in ("relu", "leaky_relu", "prelu", "selu")]
    assert labels.index("add_norm") < labels.index("add_residual") < labels.index("reinit")
    p = Patient(TrainConfig(lr=1.0), model=DeepSigmoidSeq())
    ok, skipped = singles(_diagnosis("exploding", "learning_rate_too_high"), p, sample_of(data))
    assert ok[0].label == "tune_optimizer(lr/10)" and not skipped
    ok, skipped = singles(d, Patient(TrainConfig(), model=DeepSigmoidSeq(0.01)), sample_of(data))
    assert all(why for _, why in skipped)
    assert singles(Diagnosis([], ["0"]), p, sample_of(data)) == ([], [])  # healthy: zero changes proposed


def test_the_checkup_at_init_orders_the_candidates():
    trained = _diagnosis("exploding", "init_too_large")
    # healthy at init: the finding arose in training, so the learning rate is the first suspect
    first = ranked_labels(trained, Diagnosis([], ["0"]))
    assert first[:4] == ["tune_optimizer(lr/10)", "tune_optimizer(lr/100)", "clip_gradients", "warmup"]
    assert first.index("reinit") > 3 and ranked_labels(trained)[0] == "reinit"  # without the checkup: by cause
    # stalled under Adam, vanishing at init behind sigmoids: the activation swap joins, after the rest
    stalled = ranked_labels(_diagnosis("stalled_layers", "chain_product_depth"),
                            _diagnosis("vanishing", "saturating_activation"))
    assert stalled[0] == "add_residual" and "swap_activation(relu)" in stalled
    assert "tune_optimizer(lr/10)" not in stalled


def test_pairs_combine_the_best_singles_and_remedies_for_different_causes():
    d = _diagnosis("saturation", "input_scale", "saturating_activation")
    ranked = [get(lab) for lab in ("normalize_inputs", "add_norm", "swap_activation(relu)",
                                   "swap_activation(selu)", "add_residual")]
    best_first = [get("add_residual"), get("swap_activation(selu)")]  # trained, by the loss reached
    labels = [(a.label, b.label) for a, b in pairs(d, ranked, best_first)]
    assert labels[0] == ("swap_activation(selu)", "add_residual")  # the two best, in surgery order
    assert ("add_residual", "normalize_inputs") in labels  # one per cause: input_scale x saturating
    assert ("add_norm", "add_residual") in labels  # the classic pair
    assert all(get(a).name != get(b).name for a, b in labels) and len(set(labels)) == len(labels)


def test_scale_branches_gives_output_projections_gpt2s_scale(sequences):
    torch.manual_seed(0)
    model = Stack(PreLNBlock)
    new = get("scale_branches").apply(Patient(TrainConfig(), model=model), sample_of(sequences))
    assert [c.module_path for c in new.changes] == [f"blocks.{i}.fc2" for i in range(6)]  # the branch exits
    net = new.build(0)
    for old, b in zip(model.blocks, net.blocks):
        assert b.fc2.weight.std().item() == pytest.approx(old.fc1.weight.std().item() / math.sqrt(12), rel=1e-4)
        assert torch.equal(b.fc1.weight, old.fc1.weight)
    again = Patient(TrainConfig(), model=net)
    assert "scaled down already" in get("scale_branches").why_not(again, None, sample_of(sequences))


def test_zero_init_norms_makes_every_block_the_identity(data):
    model = Stack(NormExitBlock)
    net = get("zero_init_norms").apply(Patient(TrainConfig(), model=model), sample_of(data)).build(0)
    x = data.x_train[:8]
    with torch.no_grad():
        assert torch.equal(net(x), net.head(net.inp(x)))  # x + LN(...) * 0 = x in every block
    assert "norm" in get("zero_init_norms").why_not(Patient(TrainConfig(), model=Stack(PreLNBlock)), None,
                                                    sample_of(data))


def test_layer_scale_multiplies_each_branch_by_a_small_learnable_gamma(data):
    model = Stack(PreLNBlock)
    new = get("layer_scale").apply(Patient(TrainConfig(), model=model), sample_of(data))
    net = new.build(0)
    gammas = [b.fc2.gd_layer_scale for b in net.blocks]
    assert all(isinstance(g, nn.Parameter) and torch.equal(g, torch.full((WIDTH,), 0.1)) for g in gammas)
    x = data.x_train[:8]
    with torch.no_grad():  # oracle: x + 0.1 * branch(x) in every block
        h = net.inp(x)
        for b in model.blocks:
            h = h + 0.1 * b.fc2(F.relu(b.fc1(b.ln(h))))
        assert torch.allclose(net(x), net.head(h), atol=1e-6)
    again = Patient(TrainConfig(), model=net)
    assert "LayerScale already" in get("layer_scale").why_not(again, None, sample_of(data))


def test_real_transformer_library_init_and_branches_replay_bit_identically():
    transformers = pytest.importorskip("transformers")  # in the dev extra: CI installs it
    cfg = transformers.GPT2Config(n_layer=4, n_embd=32, n_head=2, vocab_size=64, n_positions=16)
    make = lambda: transformers.GPT2LMHeadModel(cfg)
    torch.manual_seed(0)
    model = make()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(10)  # planted: weights x10
    ids = torch.randint(0, 64, (4, 16))
    sample = Sample({"input_ids": ids, "labels": ids}, lambda m, b: m(**b).loss)
    patient = Patient(TrainConfig(), model=model, own_optimizer=True)
    assert get("scale_branches").why_not(patient, None, sample).startswith("the branch outputs are scaled")
    new = get("layer_scale").apply(get("reinit(library)").apply(patient, sample), sample)
    assert sum(c.op == "layer_scale" for c in new.changes) == 8  # attention and MLP c_proj in 4 blocks
    net = new.build(0)
    assert net.transformer.h[0].attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.1)
    fresh = gd_apply(make(), new.changes)
    fresh.load_state_dict(net.state_dict())
    net.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(net(ids).logits, fresh(ids).logits)


def test_reset_norms_puts_random_small_norm_weights_back_to_one(data):
    model = small_norms(Stack(PreLNBlock))
    with torch.no_grad():
        model.blocks[0].ln.weight.zero_()  # zero on purpose (a zero-init norm): left alone
    new = get("reset_norms").apply(Patient(TrainConfig(), model=model), sample_of(data))
    weights = [c.module_path for c in new.changes if c.args["param"] == "weight"]
    assert weights == [f"blocks.{i}.ln" for i in range(1, 6)]
    net = new.build(0)
    assert all(torch.equal(b.ln.weight, torch.ones(WIDTH)) for b in net.blocks[1:])
    assert torch.equal(net.blocks[0].ln.weight, torch.zeros(WIDTH))
    assert "near 1" in get("reset_norms").why_not(Patient(TrainConfig(), model=Stack(PreLNBlock)), None,
                                                  sample_of(data))


def test_finalists_race_by_pilot_loss_with_the_diagnosis_first_choice_in_front_of_a_lower_rate():
    from types import SimpleNamespace as T

    from graddoctor.remedies.candidates import race_order

    def order(*trials):  # (label, pilot loss) in the diagnosis' order
        return [t.label for t in race_order([T(label=a, loss=b) for a, b in trials])]

    # a lower learning rate's pilot loss is higher in a short pilot: the first choice still goes first
    assert order(("tune_optimizer(lr/100)", 4.6), ("tune_optimizer(lr/10)", 4.4), ("clip_gradients", 4.5)) == \
        ["tune_optimizer(lr/100)", "tune_optimizer(lr/10)", "clip_gradients"]
    # any other first choice: second at the latest, the best pilot first
    assert order(("swap_activation(relu)", 2.0), ("reinit", 1.0), ("add_norm", 1.5)) == \
        ["reinit", "swap_activation(relu)", "add_norm"]
    assert order(("reinit", 1.0), ("add_norm", 1.5)) == ["reinit", "add_norm"]  # already first
    assert order() == []
