"""The experiment table: every claim of the mission as a small declarative grid.

Each Experiment is a base NetSpec + TrainConfig, a few axes, and two sizes: `full` (the
docs' tables and figures) and `quick` (the test suite: the same seeds, shorter runs, the same
qualitative outcome on every seed; tests/test_lab.py gives the margins measured over them). Learning
rates are chosen per experiment so that the healthy configurations train: a step-size
failure must not pass for a gradient-flow one (the `optimizer` experiment maps those).
All runs train on the bundled `digits` data (64 features, 10 classes).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import unknown
from .grid import RECORDS, Axis, Job, axis, expand

# SGD with momentum 0.9 at lr 0.005 trains every healthy 20-30 layer MLP here (measured, seeds
# 0-2, width 64: ReLU+He depth 20 reaches 0.93-0.95 val acc in 800 steps; depth 30 0.60-0.88 in
# 800, 0.97 in 1500 at width 128); at lr 0.01-0.02 deep ReLU nets diverge on some seeds within
# 400 steps, which would be a step-size failure passing for a gradient-flow one.
SGD = {"optimizer": "sgd", "lr": 0.005, "momentum": 0.9}
PROPER_INIT = {"sigmoid": "xavier_normal", "tanh": "xavier_normal", "relu": "he_normal",
               "leaky_relu": "he_normal", "prelu": "he_normal", "elu": "he_normal", "selu": "lecun_normal"}
# Every experiment runs on these seeds (weights and mini-batch order; the data split too), and a
# claim is supported only when it holds on each of them (quick mode shortens runs, never seeds).
SEEDS = (0, 1, 2)
BN = "before_activation"  # Ioffe & Szegedy (2015) normalise the pre-activation
# The quick sizes (all claims held on seeds 0-2 at each; the smallest margin in brackets, the
# rest in tests/test_lab.py): activations 400 steps (non-saturating nets reach 0.905 > 0.8);
# depth 100 (its claim reads the network at init; float64); init 200 steps at width 128, the
# small, large, Xavier and He points (theory within 0.21 decades of the measurement; width 64
# measures up to 0.30 for ReLU with large init, right at the 0.3 bar; at 150 steps ReLU+He
# reaches only 0.83); batchnorm 400 (BN sigmoid 0.94); residual 200 steps, depths 10 and 50
# only (the claim compares the shallowest with the deepest; residual nets 0.92 at depth 50);
# optimizer 600 steps, lr 0.0001 / 0.01 / 1 without momentum (ReLU at lr 0.01 trains to 0.87,
# at 400 steps only 0.82; lr 1 diverges or vanishes); he2015 400 (He 0.83 vs Xavier 0.09);
# glorot2010 3000 steps (the top sigmoid layer reaches 0.09; at 2000 steps only 0.12).


@dataclass(frozen=True)
class Size:
    """How big an experiment runs: training length, width, dtype, and which axis points to keep."""

    steps: int
    width: int
    dtype: str = "float32"  # float64 where signals fall below float32's range (1e-38)
    keep: dict = field(default_factory=dict)  # axis name -> point labels kept (default: all)


@dataclass(frozen=True)
class Experiment:
    """One claim, the grid that tests it, and how to show the result."""

    name: str
    claim: str  # the mission's claim, one sentence
    source: str  # where the claim comes from
    spec: dict  # base NetSpec fields
    config: dict  # base TrainConfig fields
    axes: tuple[Axis, ...]
    full: Size
    quick: Size
    figures: tuple[str, ...]  # panels render.py draws (see render.PANELS)
    records: int = RECORDS  # probed steps per run
    # quote the mean-field prediction of each run (theory.predict) in a `theory` column; runs it
    # does not cover yet (residual, batch norm: issue 20) get none, and no column when none has one
    theory: bool = False

    def jobs(self, quick: bool = False, seeds: Sequence[int] = SEEDS) -> list[Job]:
        """The grid at the chosen size, once per seed (seed-major: every point of seed 0 first)."""
        size = self.quick if quick else self.full
        axes = [(n, [p for p in pts if p[0] in size.keep.get(n, [p[0] for p in pts])]) for n, pts in self.axes]
        spec = {"width": size.width, "dtype": size.dtype, **self.spec}
        return [job for seed in seeds
                for job in expand(spec, {**self.config, "max_steps": size.steps, "seed": seed}, axes,
                                  group=self.name, records=self.records)]


def _nets(*names: str) -> Axis:
    return "net", [(n, {"activation": n, "init": PROPER_INIT[n]}) for n in names]


def _blocks_scale(p: dict) -> float:
    """1/sqrt(blocks): the residual branch scale that keeps an unnormalised ReLU stack stable."""
    return 1.0 / math.sqrt(math.ceil(p["depth"] / p["residual"]))


EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in [
    Experiment(
        "activations", "Saturating activations make gradients vanish; ReLU and its variants do not.",
        "Glorot & Bengio 2010; Nair & Hinton 2010; Klambauer et al. 2017 (SELU)",
        {"depth": 20}, SGD, (_nets(*PROPER_INIT),),
        Size(1500, 128), Size(400, 64), ("profiles", "loss")),
    Experiment(
        "depth", "The chain rule's product makes the gradient shrink exponentially with depth "
        "for a saturating activation, and not for ReLU with He initialisation.",
        "Hochreiter 1991; Bengio et al. 1994; Glorot & Bengio 2010",
        {}, SGD, (_nets("sigmoid", "relu"), axis("depth", "depth", (3, 5, 10, 20, 50))),
        Size(1500, 128, "float64"), Size(100, 64, "float64"), ("by_depth",)),
    Experiment(
        "init", "Too small or too large initial weights make gradients vanish or explode; Xavier "
        "(tanh) and He (ReLU) keep them, as the mean-field theory predicts.",
        "Glorot & Bengio 2010; He et al. 2015; Schoenholz et al. 2017",
        {"depth": 20}, SGD,
        (axis("activation", "activation", ("tanh", "relu")),
         axis("init", "init", ("small", "large", "xavier_normal", "he_normal", "orthogonal"))),
        Size(1500, 128, "float64"),
        Size(200, 128, "float64", keep={"init": ("small", "large", "xavier_normal", "he_normal")}),
        ("theory", "profiles"), theory=True),
    Experiment(
        "batchnorm", "Batch normalisation lets a deep sigmoid network train.",
        "Ioffe & Szegedy 2015; Yang et al. 2019 (BatchNorm's gradient growth)",
        {"depth": 20}, SGD,
        (_nets("sigmoid", "relu"), ("bn", [("plain", {"batchnorm": "none"}), ("BN", {"batchnorm": BN})])),
        Size(1500, 128), Size(400, 64), ("profiles", "loss"), theory=True),
    Experiment(
        "residual", "Deeper plain networks train worse; residual ones do not, and the plain net's "
        "degradation with BatchNorm is not a vanishing gradient.",
        "He et al. 2016",
        {"activation": "relu", "init": "he_normal"}, SGD,
        (("arch", [("plain", {}), ("plain+BN", {"batchnorm": BN}),
                   ("residual+BN", {"batchnorm": BN, "residual": 2}),
                   ("residual, 1/sqrt(blocks)", {"residual": 2, "residual_scale": _blocks_scale})]),
         axis("depth", "depth", (10, 30, 50))),
        Size(1500, 128),
        Size(200, 32, keep={"arch": ("plain+BN", "residual+BN", "residual, 1/sqrt(blocks)"), "depth": ("10", "50")}),
        ("by_depth",), theory=True),
    Experiment(
        "optimizer", "A sensible learning rate and momentum train a deep net; too small a step "
        "stalls, too large a step explodes it or saturates it until the gradient vanishes.",
        "Sutskever et al. 2013; Bengio 2012 (practical recommendations)",
        {"depth": 20}, {"optimizer": "sgd"},
        (_nets("tanh", "relu"),
         axis("lr", "lr", (1e-4, 1e-3, 1e-2, 1e-1, 1.0), lambda v: f"lr {v:g}"),
         axis("momentum", "momentum", (0.0, 0.9), lambda v: f"momentum {v:g}")),
        Size(1500, 128), Size(600, 64, keep={"lr": ("lr 0.0001", "lr 0.01", "lr 1"), "momentum": ("momentum 0",)}),
        ("grid",)),
    Experiment(
        "he2015", "A 30-layer ReLU MLP stalls with Xavier initialisation and converges with He.",
        "He et al. 2015, figure 3",
        {"depth": 30, "activation": "relu"}, SGD,
        (axis("init", "init", ("xavier_normal", "he_normal")),),
        Size(1500, 128), Size(400, 64), ("loss", "profiles")),
    Experiment(
        "glorot2010", "With the standard initialisation a sigmoid network's top hidden layer is "
        "driven towards zero early in training and recovers slowly; tanh, and tanh with the "
        "normalised initialisation, do not do this.",
        "Glorot & Bengio 2010, figure 2",
        {"depth": 4}, {"optimizer": "sgd", "lr": 0.1, "momentum": 0.0, "batch_size": 10},
        (("net", [("sigmoid", {"activation": "sigmoid", "init": "torch_default"}),
                  ("tanh", {"activation": "tanh", "init": "torch_default"}),
                  ("tanh, normalised init", {"activation": "tanh", "init": "xavier_uniform"})]),),
        Size(20000, 128), Size(3000, 128), ("top_layer", "loss"), records=60),
]}


def get(name: str) -> Experiment:
    """An experiment by name, with the list of names if unknown."""
    try:
        return EXPERIMENTS[name]
    except KeyError:
        raise unknown("experiment", name, EXPERIMENTS) from None

