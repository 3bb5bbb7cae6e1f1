"""Each remedy on its own: structure and statistics before/after, the original left untouched."""
import copy
import math

import pytest
import torch
from torch import nn

from graddoctor import NetSpec, TrainConfig, build
from graddoctor import data as data_mod
from graddoctor.diagnose.findings import Cause, Diagnosis, Finding
from graddoctor.errors import GradDoctorError
from graddoctor.nets import ResidualBlock
from graddoctor.remedies import REMEDIES, Patient, Standardize, get
from graddoctor.remedies.candidates import pairs, ranked_labels, singles

WIDTH, DEPTH = 32, 8


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
    """Activations applied with torch.sigmoid in forward(): nothing to swap."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.ModuleList(nn.Linear(16 if i == 0 else WIDTH, WIDTH) for i in range(4))
        self.head = nn.Linear(WIDTH, 4)

    def forward(self, x):
        for fc in self.fc:
            x = torch.sigmoid(fc(x))
        return self.head(x)


class EmbeddingTanh(nn.Module):
    """An Embedding (no reinit rule) feeding a Linear + Tanh stack."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 16)
        self.body = nn.Sequential(nn.Linear(16, WIDTH), nn.Tanh(), nn.Linear(WIDTH, 4))

    def forward(self, x):
        return self.body(self.emb(x))


def TanhCNN() -> nn.Sequential:
    """Conv2d + Tanh blocks of the same shape, then pooling and a head."""
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 8, 3, padding=1), nn.Tanh(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4))


@pytest.fixture(scope="module")
def data():
    return data_mod.gaussians(n=256, dim=16, classes=4, seed=0)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return data_mod.from_tensors(torch.randn(64, 1, 8, 8, generator=g), torch.randint(0, 4, (64,), generator=g))


def grad_ratio(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Oracle by plain autograd: ||dL/dW|| of the first weight layer / the last hidden one's."""
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    w = [m.weight.grad.norm().item() for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return w[0] / w[-2]


def untouched(model: nn.Module, apply) -> None:
    """Run apply() and assert the model's weights, buffers and structure did not change."""
    state, text = copy.deepcopy(model.state_dict()), repr(model)
    apply()
    assert repr(model) == text
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)


@pytest.mark.parametrize("label", list(REMEDIES))
def test_every_remedy_leaves_the_original_untouched(label, data):
    torch.manual_seed(0)
    model = DeepSigmoidSeq()
    patient = Patient(TrainConfig(), model=model)
    remedy = get(label)
    assert remedy.applies_to(patient, None, data)  # gaussians are not standardised: all apply
    out = {}
    untouched(model, lambda: out.setdefault("p", remedy.apply(patient, data)))
    new = out["p"]
    assert new.changes and new.applied == (label,) and patient.changes == ()
    net = new.build(0)
    assert net(data.x_train[:5]).shape == (5, 4)
    assert net is not model and all(p is not q for p in net.parameters() for q in model.parameters())


def test_swap_activation_relu_he_restores_the_gradient(data):
    torch.manual_seed(0)
    model = DeepSigmoidSeq()
    x, y = data.x_train[:128], data.y_train[:128]
    before = grad_ratio(model, x, y)
    new = get("swap_activation(relu)").apply(Patient(TrainConfig(), model=model), data).model
    assert sum(isinstance(m, nn.Sigmoid) for m in new.modules()) == 0
    assert sum(isinstance(m, nn.ReLU) for m in new.modules()) == DEPTH
    for i in range(1, DEPTH):  # the hidden layers feeding a ReLU now have He's std sqrt(2/fan_in)
        assert new[2 * i].weight.std().item() == pytest.approx(math.sqrt(2 / WIDTH), rel=0.15)
    after = grad_ratio(new, x, y)
    assert before < 1e-3  # 8 sigmoid layers: the first layer's gradient has all but vanished
    assert 0.1 < after < 10  # ReLU + He: the same order of magnitude in every layer


def test_swap_to_selu_uses_lecun_init(data):
    new = get("swap_activation(selu)").apply(Patient(TrainConfig(), model=DeepSigmoidSeq()), data).model
    assert sum(isinstance(m, nn.SELU) for m in new.modules()) == DEPTH
    assert new[2].weight.std().item() == pytest.approx(math.sqrt(1 / WIDTH), rel=0.15)


def test_functional_activation_cannot_be_swapped_and_says_so(data):
    model = FunctionalSigmoidMLP()
    patient = Patient(TrainConfig(), model=model)
    remedy = get("swap_activation(relu)")
    assert remedy.applies_to(patient, None, data)  # found by watching one forward pass
    new = remedy.apply(patient, data)
    assert [c.module_path for c in new.changes] == ["<forward>"]
    assert "functional" in new.changes[0].note and "4" in new.changes[0].before
    assert repr(new.model) == repr(model)  # nothing could change


def test_reinit_small_init_gets_glorot_for_sigmoid(data):
    torch.manual_seed(0)
    model = DeepSigmoidSeq(init_std=0.01)
    patient = Patient(TrainConfig(), model=model)
    remedy = get("reinit")
    assert remedy.applies_to(patient, None, data)
    new = remedy.apply(patient, data)
    assert len(new.changes) == DEPTH + 1  # every Linear, the head (Glorot) included
    w = new.model[2].weight
    assert w.std().item() == pytest.approx(math.sqrt(2 / (2 * WIDTH)), rel=0.15)
    assert all(torch.count_nonzero(m.bias) == 0 for m in new.model if isinstance(m, nn.Linear))
    again = Patient(TrainConfig(), model=new.model)
    assert not remedy.applies_to(again, None, data)  # already Glorot: nothing left to do


def test_reinit_orthogonal_is_orthogonal(data):
    new = get("reinit(orthogonal)").apply(Patient(TrainConfig(), model=DeepSigmoidSeq(0.01)), data).model
    w = new[2].weight.detach()
    gain = nn.init.calculate_gain("sigmoid")
    assert torch.allclose(w @ w.T, gain**2 * torch.eye(WIDTH), atol=1e-5)


def test_reinit_reports_layers_it_has_no_rule_for():
    new = get("reinit").apply(Patient(TrainConfig(), model=EmbeddingTanh()))
    notes = [c for c in new.changes if c.note]
    assert [c.module_path for c in notes] == ["emb"] and "Embedding" in notes[0].note


def test_add_batchnorm_normalises_each_preactivation(data):
    torch.manual_seed(0)
    model = DeepSigmoidSeq(init_std=1.0)  # huge pre-activations: saturated sigmoids
    new = get("add_batchnorm").apply(Patient(TrainConfig(), model=model), data).model
    names = [n for n, _ in new.named_children()]
    assert names[:4] == ["0", "0_bn", "1", "2"] and sum(n.endswith("_bn") for n in names) == DEPTH
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(o)) for m in new if isinstance(m, nn.BatchNorm1d)]
    new.train()(data.x_train)
    for h in hooks:
        h.remove()
    for o in seen:
        assert abs(o.mean().item()) < 0.05 and o.std().item() == pytest.approx(1.0, abs=0.05)
    # the existing layers keep their names, so their state-dict keys still match the original's
    assert set(model.state_dict()) <= set(new.state_dict())


def test_add_batchnorm_conv_gets_batchnorm2d(images):
    new = get("add_batchnorm").apply(Patient(TrainConfig(), model=TanhCNN()), images).model
    assert sum(isinstance(m, nn.BatchNorm2d) for m in new.modules()) == 3
    assert new(images.x_train[:2]).shape == (2, 4)


def test_add_batchnorm_skips_a_linear_on_sequences_with_a_note():
    model = nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4))
    seqs = data_mod.from_tensors(torch.randn(20, 5, 16), torch.randint(0, 4, (20,)))
    new = get("add_batchnorm").apply(Patient(TrainConfig(), model=model), seqs)
    assert len(new.changes) == 1 and "3 dimensions" in new.changes[0].note


def test_add_residual_wraps_same_shaped_blocks(data):
    torch.manual_seed(0)
    model = DeepSigmoidSeq()
    x, y = data.x_train[:128], data.y_train[:128]
    new = get("add_residual").apply(Patient(TrainConfig(), model=model), data).model
    blocks = [m for m in new if isinstance(m, ResidualBlock)]
    assert len(blocks) == DEPTH - 1  # the first block changes 16 -> 32 features: not wrapped
    assert blocks[0].scale == pytest.approx(1 / math.sqrt(DEPTH - 1))
    assert isinstance(new[0], nn.Linear) and isinstance(new[-1], nn.Linear)
    assert grad_ratio(new, x, y) > 100 * grad_ratio(model, x, y)  # the skips carry the gradient


def test_add_residual_needs_data_and_says_so():
    new = get("add_residual").apply(Patient(TrainConfig(), model=DeepSigmoidSeq()))
    assert new.changes[0].note.startswith("needs sample inputs")


def test_add_residual_on_a_graddoctor_net_wraps_its_layers(data):
    spec = NetSpec(depth=6, width=16, in_shape=(16,), out_features=4, activation="tanh")
    model = build(spec, seed=0)
    new = get("add_residual").apply(Patient(TrainConfig(), model=model), data).model
    assert sum(isinstance(m, ResidualBlock) for m in new.modules()) == 6
    assert new(data.x_train[:3]).shape == (3, 4)


def test_config_remedies_change_only_the_config(data):
    p = Patient(TrainConfig(lr=0.1, momentum=0.9), model=DeepSigmoidSeq())
    assert get("tune_optimizer(lr/10)").apply(p).config.lr == pytest.approx(0.01)
    assert get("tune_optimizer(lr/100)").apply(p).config.lr == pytest.approx(0.001)
    assert get("tune_optimizer(lr*10)").apply(p).config.lr == pytest.approx(1.0)
    assert get("tune_optimizer(momentum)").apply(p).config.momentum == 0.0
    clipped = get("clip_gradients").apply(p)
    assert clipped.config.clip_norm == 1.0 and clipped.model is p.model and p.config.clip_norm is None
    assert not get("clip_gradients").applies_to(clipped)


def test_normalize_inputs_standardises_what_the_model_sees():
    g = torch.Generator().manual_seed(0)
    raw = data_mod.from_tensors(255 * torch.rand(200, 16, generator=g) + 40, torch.randint(0, 4, (200,), generator=g))
    p = Patient(TrainConfig(), model=DeepSigmoidSeq())
    remedy = get("normalize_inputs")
    assert remedy.applies_to(p, None, raw)
    net = remedy.apply(p, raw).build(0)
    assert isinstance(net, Standardize)
    z = (raw.x_train - net.mean) / net.std
    assert z.mean(0).abs().max() < 1e-4 and torch.allclose(z.std(0), torch.ones(16), atol=1e-3)
    assert "std 1" in remedy.apply(p, raw).changes[0].after


def test_spec_remedies_return_new_specs(data):
    spec = NetSpec(depth=20, width=16, in_shape=(16,), out_features=4, activation="sigmoid", init="xavier_normal")
    p = Patient(TrainConfig(), spec=spec)
    got = {lab: r.apply(p, data).spec for lab, r in REMEDIES.items() if r.applies_to(p, None, data)}
    assert got["swap_activation(relu)"].activation == "relu" and got["swap_activation(relu)"].init == "he_normal"
    assert got["swap_activation(selu)"].init == "lecun_normal"
    assert got["add_batchnorm"].batchnorm == "before_activation"
    assert got["add_residual"].residual == 2 and got["add_residual"].residual_scale == pytest.approx(0.1 ** 0.5)
    assert "reinit" not in got  # xavier is already the right init for sigmoid
    assert spec.activation == "sigmoid" and spec.batchnorm == "none"  # frozen: unchanged


def test_unknown_remedy_names_the_choices():
    with pytest.raises(GradDoctorError, match="unknown remedy 'relu'; choose one of: swap_activation"):
        get("relu")


def _diagnosis(kind: str, *causes: str) -> Diagnosis:
    f = Finding(kind, "critical", ("0",), "test", {}, tuple(Cause(c, "") for c in causes), ())
    return Diagnosis([f], ["0"])


def test_candidates_follow_the_ranked_causes(data):
    d = _diagnosis("vanishing", "saturating_activation", "chain_product_depth")
    labels = ranked_labels(d)
    assert labels[:4] == [f"swap_activation({t})" for t in ("relu", "leaky_relu", "prelu", "selu")]
    assert labels.index("add_batchnorm") < labels.index("add_residual") < labels.index("reinit")
    p = Patient(TrainConfig(lr=1.0), model=DeepSigmoidSeq())
    assert singles(_diagnosis("exploding", "learning_rate_too_high"), p, data)[0].label == "tune_optimizer(lr/10)"
    assert singles(Diagnosis([], ["0"]), p, data) == []  # healthy: zero changes proposed


def test_pairs_combine_the_best_singles_and_remedies_for_different_causes():
    d = _diagnosis("saturation", "input_scale", "saturating_activation")
    ranked = [get(lab) for lab in ("normalize_inputs", "add_batchnorm", "swap_activation(relu)",
                                   "swap_activation(selu)", "add_residual")]
    best_first = [get("add_residual"), get("swap_activation(selu)")]  # trained, by the loss reached
    labels = [(a.label, b.label) for a, b in pairs(d, ranked, best_first)]
    assert labels[0] == ("swap_activation(selu)", "add_residual")  # the two best, in surgery order
    assert ("add_residual", "normalize_inputs") in labels  # one per cause: input_scale x saturating
    assert ("add_batchnorm", "add_residual") in labels  # the classic pair
    assert all(get(a).name != get(b).name for a, b in labels) and len(set(labels)) == len(labels)
