"""The bench: NetSpec -> build structure and wiring, initialiser statistics, activation registry.

Oracles: layer lists and parameter counts written out by hand, initialiser formulas from the
papers (not from graddoctor.init), and torch.autograd for every activation derivative.
"""
import math

import pytest
import torch
from torch import nn

from graddoctor import activations, init, nets
from graddoctor.errors import GradDoctorError
from graddoctor.nets import BATCHNORM, KINDS, Layer, NetSpec, ResidualBlock, build

IN_SHAPE = {"mlp": (12,), "cnn": (2, 5, 5)}  # in != width, so the first block needs a projection
SOME_ACTIVATIONS = ("relu", "sigmoid", "leaky_relu", "prelu")
DEPTH = 5  # not divisible by 2 or 3: the last residual block is shorter


def small_spec(**kw) -> NetSpec:
    kind = kw.get("kind", "mlp")
    base = dict(depth=DEPTH, width=6, in_shape=IN_SHAPE[kind], out_features=3)
    return NetSpec(**{**base, **kw})


def expected_layer(spec: NetSpec) -> list[tuple[str, type]]:
    """(child name, class) of one hidden Layer, written out from the spec."""
    conv = spec.kind == "cnn"
    lin = ("linear", nn.Conv2d if conv else nn.Linear)
    bn = ("bn", nn.BatchNorm2d if conv else nn.BatchNorm1d)
    act = ("act", type(activations.get(spec.activation).module(spec.negative_slope)))
    return {"none": [lin, act], "before_activation": [lin, bn, act],
            "after_activation": [lin, act, bn]}[spec.batchnorm]


def hidden_layers(model: nn.Module) -> list[Layer]:
    return [m for m in model.modules() if isinstance(m, Layer)]


def forward_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Qualified names of leaf modules in the order the forward pass runs them."""
    seen, handles = [], []
    for name, mod in model.named_modules():
        if not list(mod.children()):
            handles.append(mod.register_forward_hook(lambda m, i, o, name=name: seen.append(name)))
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


# --- structure ---------------------------------------------------------------------------------

@pytest.mark.parametrize("activation", SOME_ACTIVATIONS)
@pytest.mark.parametrize("residual", (0, 2, 3), ids=lambda r: f"residual{r}")
@pytest.mark.parametrize("batchnorm", BATCHNORM)
@pytest.mark.parametrize("kind", KINDS)
def test_layers_count_order_and_blocks(kind, batchnorm, residual, activation):
    spec = small_spec(kind=kind, batchnorm=batchnorm, residual=residual, activation=activation)
    model = build(spec, seed=0)
    layers = hidden_layers(model)
    assert len(layers) == DEPTH
    want = expected_layer(spec)
    for layer in layers:
        assert [(n, type(m)) for n, m in layer.named_children()] == want
    assert layers[0].linear.weight.shape[:2] == (6, IN_SHAPE[kind][0])
    assert all(layer.linear.weight.shape[:2] == (6, 6) for layer in layers[1:])
    if kind == "cnn":
        assert layers[0].linear.kernel_size == (3, 3) and layers[0].linear.padding == (1, 1)
    if residual:
        blocks = list(model.body)
        assert all(isinstance(b, ResidualBlock) for b in blocks)
        sizes = {2: [2, 2, 1], 3: [3, 2]}[residual]
        assert [len(b.branch) for b in blocks] == sizes
        assert [m for b in blocks for m in b.branch] == layers
    else:
        assert list(model.body) == layers
    x = torch.randn(4, *IN_SHAPE[kind])
    assert model(x).shape == (4, 3)
    # data flows linear -> [bn] -> act -> [bn] in every layer, then pool and head
    order = forward_order(model, x)
    hidden = [n for n in order if ".branch." in n or (not residual and n.startswith("body."))]
    assert [n.rsplit(".", 1)[1] for n in hidden] == [name for name, _ in want] * DEPTH
    assert order[-1] == "head"


def test_depth_divisible_by_block_size_gives_equal_blocks():
    model = build(small_spec(depth=6, residual=3))
    assert [len(b.branch) for b in model.body] == [3, 3]
    model = build(small_spec(depth=3, residual=1))
    assert [len(b.branch) for b in model.body] == [1, 1, 1]


@pytest.mark.parametrize("kind", KINDS)
def test_batchnorm_placement_normalises_what_it_should(kind):
    """before_activation: the activation sees N(0,1) pre-activations; after: the layer outputs are."""
    dims = (0, 2, 3) if kind == "cnn" else (0,)
    x = 3 * torch.randn(64, *IN_SHAPE[kind]) + 2
    for placement, watched in (("before_activation", "act"), ("after_activation", "bn")):
        model = build(small_spec(kind=kind, batchnorm=placement, activation="sigmoid", depth=2), seed=1)
        seen = {}
        layer = model.body[1]
        h = getattr(layer, watched).register_forward_hook(lambda m, i, o: seen.update(i=i[0], o=o))
        model.train()(x)
        h.remove()
        normalised = seen["i"] if watched == "act" else seen["o"]
        assert normalised.mean(dims).abs().max() < 1e-5
        assert (normalised.var(dims, unbiased=False) - 1).abs().max() < 1e-2  # BN's eps
        if placement == "after_activation":  # sigmoid outputs are in (0, 1): not normalised
            assert seen["i"].min() > 0


# --- residual wiring ---------------------------------------------------------------------------

def zero_branches(model: nn.Module) -> None:
    with torch.no_grad():
        for layer in hidden_layers(model):
            layer.linear.weight.zero_()
            layer.linear.bias.zero_()


@pytest.mark.parametrize("kind,in_shape", [("mlp", (6,)), ("cnn", (6, 4, 4))])
def test_identity_initialised_blocks_pass_input_through_exactly(kind, in_shape):
    model = build(NetSpec(kind=kind, depth=5, width=6, in_shape=in_shape, residual=2,
                          activation="relu", out_features=3), seed=0)
    assert all(isinstance(b.shortcut, nn.Identity) for b in model.body)  # in == width everywhere
    zero_branches(model)  # relu(0) = 0: every branch now outputs exactly zero
    x = torch.randn(3, *in_shape)
    assert torch.equal(model.body(x), x)
    assert torch.equal(model(x), model.head(model.pool(x)))


@pytest.mark.parametrize("kind", KINDS)
def test_projection_shortcut_when_shapes_differ(kind):
    model = build(small_spec(kind=kind, residual=2, activation="tanh"), seed=0)
    first, rest = model.body[0].shortcut, [b.shortcut for b in model.body[1:]]
    if kind == "mlp":
        assert isinstance(first, nn.Linear) and first.weight.shape == (6, 12) and first.bias is None
    else:
        assert isinstance(first, nn.Conv2d) and first.weight.shape == (6, 2, 1, 1) and first.bias is None
    assert all(isinstance(s, nn.Identity) for s in rest)
    zero_branches(model)  # tanh(0) = 0: the block is its projection
    x = torch.randn(3, *IN_SHAPE[kind])
    assert torch.equal(model.body[0](x), first(x))


def test_branch_scale_multiplies_the_branch_only():
    model = build(small_spec(residual=2, residual_scale=0.3), seed=0)
    assert all(b.scale == 0.3 for b in model.body)
    block, x = model.body[1], torch.randn(5, 6)
    torch.testing.assert_close(block(x), x + 0.3 * block.branch(x))
    assert "scale=0.3" in repr(block)


def test_residual_relu_signal_grows_geometrically_unless_the_branch_is_scaled():
    """He-initialised ReLU residual stack, blocks y = x + alpha relu(W x): unscaled, the mean square
    grows at least 2x per block (measured ~2.75x: the branch ends in a ReLU, so its output is
    positive and correlates with x); alpha = 1/sqrt(L) removes almost all of that growth."""
    blocks, width = 8, 256
    x = torch.randn(512, width)
    growth = {}
    for scale in (1.0, 1 / math.sqrt(blocks)):
        spec = NetSpec(depth=blocks, width=width, in_shape=(width,), residual=1, residual_scale=scale,
                       init="he_normal")
        with torch.no_grad():
            growth[scale] = (build(spec, seed=0).body(x).pow(2).mean() / x.pow(2).mean()).item()
    assert 2.0**blocks < growth[1.0] < 3.5**blocks  # seeds 0-4: 3,100-3,600
    assert growth[1 / math.sqrt(blocks)] < 20  # seeds 0-4: 9.3-10.4


# --- dtype, describe, errors -------------------------------------------------------------------

def test_float64_network_and_what_it_is_for():
    """A 30-layer sigmoid net with N(0, 0.01^2) weights: float32 flushes the first layer's gradient
    to exactly 0 (it is ~1e-55); float64 keeps it."""
    grads = {}
    for dtype in ("float32", "float64"):
        spec = NetSpec(depth=30, width=32, in_shape=(16,), activation="sigmoid", init="small", dtype=dtype)
        model = build(spec, seed=0)
        assert {p.dtype for p in model.parameters()} == {getattr(torch, dtype)}
        out = model(torch.randn(8, 16, dtype=getattr(torch, dtype)))
        assert out.dtype == getattr(torch, dtype)
        nn.functional.cross_entropy(out, torch.arange(8)).backward()
        grads[dtype] = model.body[0].linear.weight.grad.abs().max().item()
    assert grads["float32"] == 0.0
    assert 0 < grads["float64"] < 1e-40


@pytest.mark.parametrize("spec,names,params", [
    pytest.param(dict(kind="mlp", depth=2, batchnorm="before_activation"),
                 ["body.0.linear", "body.0.bn", "body.0.act", "body.1.linear", "body.1.bn", "body.1.act",
                  "pool", "head"],
                 (12 * 6 + 6) + 12 + (6 * 6 + 6) + 12 + (6 * 3 + 3), id="mlp-bn-before"),
    pytest.param(dict(kind="cnn", depth=2, residual=2, activation="prelu"),
                 ["body.0.branch.0.linear", "body.0.branch.0.act", "body.0.branch.1.linear",
                  "body.0.branch.1.act", "body.0.shortcut", "pool.0", "head"],
                 (2 * 6 * 9 + 6) + 1 + (6 * 6 * 9 + 6) + 1 + 2 * 6 + (6 * 3 + 3), id="cnn-residual-prelu"),
])
def test_describe_lists_layers_in_order_with_matching_parameter_count(spec, names, params):
    model = build(small_spec(**spec))
    lines = nets.describe(model).splitlines()
    assert [line.split()[0] for line in lines[:-1]] == names
    assert lines[-1] == f"total: {params:,} trainable parameters"
    assert sum(n for _, _, n in nets.summary(model)) == params == nets.count_parameters(model)
    text = repr(model)
    assert f"{params:,} trainable parameters" in text and model.spec.summary() in text
    positions = [text.index(n) for n in ("(body):", "(0):", "(pool):", "(head):")]
    assert positions == sorted(positions)


@pytest.mark.parametrize("field,value,choices", [
    ("activation", "sigmoidd", activations.ACTIVATIONS),
    ("init", "foo", init.INITS),
    ("kind", "rnn", KINDS),
    ("batchnorm", "sideways", BATCHNORM),
    ("dtype", "float16", nets.DTYPES),
])
def test_unknown_names_list_the_choices(field, value, choices):
    with pytest.raises(GradDoctorError) as err:
        NetSpec(**{field: value})
    msg = str(err.value)
    assert repr(value) in msg and all(c in msg for c in choices)


@pytest.mark.parametrize("bad", [dict(depth=0), dict(width=0), dict(out_features=0), dict(residual=-1),
                                 dict(kind="cnn", in_shape=(64,)), dict(in_shape=())], ids=str)
def test_bad_numbers_and_shapes_are_rejected(bad):
    with pytest.raises(GradDoctorError):
        NetSpec(**bad)


def test_registry_lookups_fail_with_choices():
    with pytest.raises(GradDoctorError, match="choose one of: sigmoid, tanh, relu"):
        activations.get("sigmoidd")
    with pytest.raises(GradDoctorError, match="orthogonal"):
        init.initialise(nn.Linear(2, 2), "foo")
    with pytest.raises(GradDoctorError, match="he_normal"):
        init.variance("foo", 4, 4)


def test_spec_round_trip_copy_and_summary():
    spec = NetSpec(depth=20, activation="sigmoid", init="xavier_normal", residual=2, residual_scale=0.5)
    assert NetSpec.from_dict(spec.to_dict()) == spec
    assert spec.with_(depth=3).depth == 3 and spec.depth == 20
    with pytest.raises(GradDoctorError):
        spec.with_(depth=0)
    assert spec.summary() == "20x64 sigmoid mlp, init=xavier_normal, bn=none, residual=2x0.5"
    assert NetSpec(in_shape=64).in_shape == (64,)


def test_build_is_seeded():
    a, b = build(NetSpec(), seed=3), build(NetSpec(), seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    c = build(NetSpec(), seed=4)
    assert not torch.equal(a.head.weight, c.head.weight)


# --- initialisers --------------------------------------------------------------------------------

LAYERS = {  # (factory, fan_in, fan_out): enough weights for a std estimate within ~0.5%
    "linear400to100": (lambda: nn.Linear(400, 100), 400, 100),
    "conv32to64": (lambda: nn.Conv2d(32, 64, 3), 32 * 9, 64 * 9),
}
HE_GAIN = {"relu": math.sqrt(2), "leaky_relu": math.sqrt(2 / (1 + 0.2**2)),
           "prelu": math.sqrt(2 / (1 + 0.25**2)), "tanh": math.sqrt(2)}  # He et al. (2015)


def expected_std(name: str, activation: str, fan_in: int, fan_out: int) -> float:
    return {
        "torch_default": 1 / math.sqrt(3 * fan_in),  # kaiming_uniform_(a=sqrt(5))
        "small": 0.01, "large": 1.0,
        "xavier_normal": math.sqrt(2 / (fan_in + fan_out)),  # Glorot & Bengio (2010), gain 1
        "xavier_uniform": math.sqrt(2 / (fan_in + fan_out)),
        "he_normal": HE_GAIN[activation] / math.sqrt(fan_in),
        "he_uniform": HE_GAIN[activation] / math.sqrt(fan_in),
        "lecun_normal": 1 / math.sqrt(fan_in),  # LeCun et al. (1998)
    }[name]


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("activation", HE_GAIN)
@pytest.mark.parametrize("name", [n for n in init.INITS if n != "orthogonal"])
def test_initialiser_std_matches_the_formula(name, activation, layer):
    make, fan_in, fan_out = LAYERS[layer]
    mod = make()
    init.initialise(mod, name, activation, negative_slope=0.2)
    w, std = mod.weight.detach(), expected_std(name, activation, fan_in, fan_out)
    assert init.fans(w) == (fan_in, fan_out)
    assert abs(w.std().item() / std - 1) < 0.05
    assert abs(w.mean().item()) < 0.05 * std
    if name.endswith("uniform") or name == "torch_default":  # bounded at sqrt(3) std
        assert 0.95 * math.sqrt(3) * std < w.abs().max().item() <= math.sqrt(3) * std * (1 + 1e-6)
    else:
        assert w.abs().max().item() > 3.3 * std  # normal tails reach past the uniform bound
    if name != "torch_default":
        assert torch.count_nonzero(mod.bias) == 0
    # the variance graddoctor reports for the theory matches what the layer got
    v = init.variance(name, fan_in, fan_out, activation, negative_slope=0.2)
    assert abs(w.var().item() * fan_in / v.sigma_w2 - 1) < 0.05


def test_torch_default_bias_variance():
    mod = nn.Linear(50, 4000)  # 4,000 biases: variance estimate within ~1.5%
    init.initialise(mod, "torch_default")
    assert abs(mod.bias.var().item() / init.variance("torch_default", 50, 4000).sigma_b2 - 1) < 0.1


GAINS = {"relu": math.sqrt(2), "tanh": 5 / 3, "sigmoid": 1.0, "selu": 0.75, "identity": 1.0,
         "leaky_relu": math.sqrt(2 / (1 + 0.2**2)), "prelu": math.sqrt(2 / (1 + 0.25**2))}


@pytest.mark.parametrize("activation", GAINS)
@pytest.mark.parametrize("shape", [(64, 64), (16, 64), (64, 16), (8, 4, 3, 3), (64, 2, 3, 3)], ids=str)
def test_orthogonal_is_orthogonal_with_the_activation_gain(shape, activation):
    mod = nn.Linear(shape[1], shape[0]) if len(shape) == 2 else nn.Conv2d(shape[1], shape[0], 3)
    init.initialise(mod, "orthogonal", activation, negative_slope=0.2)
    w = mod.weight.detach().double().flatten(1)  # rows = output units / channels
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    g2 = GAINS[activation] ** 2
    torch.testing.assert_close(gram, g2 * torch.eye(len(gram), dtype=torch.float64), atol=1e-5 * g2, rtol=0)
    fan_in, fan_out = init.fans(mod.weight)
    rf = 9 if len(shape) == 4 else 1
    v = init.variance("orthogonal", fan_in, fan_out, activation, 0.2, receptive_field=rf)
    assert abs(w.pow(2).mean().item() * fan_in / v.sigma_w2 - 1) < 1e-4


def test_init_reaches_every_hidden_layer_and_head_uses_glorot():
    spec = NetSpec(depth=4, width=200, in_shape=(200,), init="small", out_features=50)
    model = build(spec, seed=0)
    for layer in hidden_layers(model):
        assert abs(layer.linear.weight.std().item() / 0.01 - 1) < 0.05
    assert abs(model.head.weight.std().item() / math.sqrt(2 / 250) - 1) < 0.05


# --- activation registry (torch.autograd is the oracle) -------------------------------------------

GRID = torch.linspace(-8, 8, 1600, dtype=torch.float64)  # even count: 0 (the kink) is not on it


@pytest.mark.parametrize("slope", (0.01, 0.2))
@pytest.mark.parametrize("name", activations.ACTIVATIONS)
def test_derivative_matches_autograd(name, slope):
    act = activations.get(name)
    x = GRID.clone().requires_grad_(True)
    y = act.fn(x, slope)
    (grad,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(act.deriv(GRID, slope), grad, rtol=1e-12, atol=1e-12)
    module = act.module(slope).double()
    torch.testing.assert_close(module(GRID).detach(), y.detach())  # the module the builder inserts
    assert activations.of_module(module).name == name
    # max_deriv (the saturation test's yardstick) is the sup of |phi'|, within 1%
    assert abs(act.deriv(GRID, slope).abs().max().item() / act.max_deriv - 1) < 0.01


@pytest.mark.parametrize("name", [n for n, a in activations.ACTIVATIONS.items() if a.deriv_from_output])
def test_deriv_from_output_agrees_with_deriv(name):
    act = activations.get(name)
    torch.testing.assert_close(act.deriv_from_output(act.fn(GRID, 0.0)), act.deriv(GRID, 0.0),
                               rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name,inside,outside", [("sigmoid", 5.9, 6.1), ("tanh", 2.9, 3.1)])
def test_saturation_thresholds(name, inside, outside):
    act = activations.get(name)
    x = torch.tensor([inside, -inside, outside, -outside, 0.0])  # float32, as the probe sees it
    assert act.saturated(act.fn(x, 0.0)).tolist() == [False, False, True, True, False]
    assert act.saturating and not act.relu_family


def test_non_saturating_activations_never_report_saturation():
    x = torch.tensor([-50.0, -6.0, 6.0, 50.0])
    for name, act in activations.ACTIVATIONS.items():
        if not act.saturating:
            assert not act.saturated(act.fn(x, 0.01)).any(), name
    assert {n for n, a in activations.ACTIVATIONS.items() if a.relu_family} == {"relu", "leaky_relu", "prelu"}
    assert {n for n, a in activations.ACTIVATIONS.items() if a.saturating} == {"sigmoid", "tanh"}


def test_leaky_relu_slope_reaches_the_module_and_prelu_is_learnable():
    model = build(NetSpec(depth=2, activation="leaky_relu", negative_slope=0.3))
    assert all(layer.act.negative_slope == 0.3 for layer in hidden_layers(model))
    model = build(NetSpec(depth=2, activation="prelu"))
    assert all(layer.act.weight.requires_grad and layer.act.weight.item() == 0.25
               for layer in hidden_layers(model))
