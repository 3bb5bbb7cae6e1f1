"""Pathologies planted in zoo architectures, each with a ground truth measured by plain autograd.

Plantings: the activation swapped to sigmoid (the config's activation field), every weight matrix
and kernel scaled x0.01 or x10 after the library's init, the learning rate x100, a deep post-LN
encoder at a high learning rate without warmup, fp16 autocast without a loss scaler, identity
shortcuts removed; and one pathology that ships with a library (EfficientNet's BatchNorm init).

Every planting in `ALL` carries a claim, checked by plain autograd against its healthy base over
3 seeds (zoo_oracle.py; `python benchmarks/zoo.py --oracle --write` re-measures and records the
numbers in tests/zoo_evidence.json, which `Planted.evidence` reads):
- `PLANTED`: the claim holds — the gradient really vanishes / explodes (>= 2 decades against the
  healthy model, the diagnosis' own line) or underflows in the phase `when`, and the planting is
  not harmless; or, for a training fault (truth="cost"), the run diverges or ends HARM x the
  healthy loss drop above the healthy loss. These are scored by benchmarks/zoo.py.
- `HARMLESS`: the planting costs nothing (final loss within 0.1x the healthy drop, or better):
  an expected-healthy variant (e.g. x10 weights before BatchNorm, which the normalisation undoes).
- `UNSCORED`: harmful, but without a gradient signature by that line (e.g. shortcuts removed from
  a BatchNorm ResNet: degradation without vanishing gradients, as He et al. 2016 observed), or
  only mildly harmful. Judged and shown by the benchmark, not counted.
"""
from __future__ import annotations

import json
from pathlib import Path

from zoo_base import Planted, ZooModel, derive
from zoo_faults import (
    config_change,
    fp16_autocast,
    fp16_params,
    gpt2_plain,
    llama_plain,
    lr_times,
    neox_plain,
    patched,
    resnet_without_shortcuts,
    scaled_init,
    vit_plain,
    without_residuals,
)
from zoo_models import MODELS

BASE = {m.name: m for m in MODELS}


V, E = frozenset({"vanishing"}), frozenset({"exploding"})
DIVERGES = frozenset({"exploding", "non_finite", "stalled_layers", "saturation", "dead_units"})  # a too-high lr
NAN = frozenset({"non_finite"})
LR, UNDER = ("learning_rate_too_high",), ("precision_underflow", "non_finite_forward")
EVIDENCE_FILE = Path(__file__).with_name("zoo_evidence.json")  # written by benchmarks/zoo.py --oracle --write
EVIDENCE: dict[str, dict] = json.loads(EVIDENCE_FILE.read_text()) if EVIDENCE_FILE.exists() else {}


def case(recipe: ZooModel, base: str, fault: str, kinds: frozenset[str] = frozenset(), causes: tuple[str, ...] = (),
         blocks: tuple[str, ...] = (), when: str = "both", *, truth: str = "gradient", category: str = "planted",
         **extra) -> Planted:
    """One planting and its claim: `category` planted (kinds/causes/blocks/when hold), harmless, or unscored.

    truth="gradient": the claim is a gradient fault (>= DECADES against healthy, or underflow) in
    the phase(s) `when`, and the planting is not harmless; truth="cost": a training fault whose
    truth is its cost (divergence, or a loss HARM x the healthy drop above healthy).
    """
    ev = EVIDENCE.get(recipe.name, {})
    return Planted(name=recipe.name, base=base, fault=fault, model=recipe, kinds=kinds, causes=causes,
                   blocks=blocks, when=when, evidence=ev.get("text", ""),
                   extra={"truth": truth, "category": category, "measured": ev, **extra})


def _sigmoid(b: str) -> ZooModel:
    key = {"gpt2": "activation_function"}.get(b, "hidden_act")
    return config_change(BASE[b], f"{b}-sigmoid", **{key: "sigmoid"})


_NO_RES = {
    "gpt2": without_residuals(r"transformer\.h\.\d+", gpt2_plain),
    "vit": without_residuals(r"vit\.layers\.\d+", vit_plain),
    "llama": without_residuals(r"model\.layers\.\d+", llama_plain),
    "gpt-neox": without_residuals(r"gpt_neox\.layers\.\d+", neox_plain),
    "resnet-bottleneck": resnet_without_shortcuts, "regnet": resnet_without_shortcuts,
}


def _nores(b: str) -> ZooModel:
    return patched(BASE[b], f"{b}-no-residual", _NO_RES[b])


def _scaled(b: str, f: float) -> ZooModel:
    return scaled_init(BASE[b], f"{b}-x{f:g}", f)


def _lr(b: str, f: float) -> ZooModel:
    return lr_times(BASE[b], f"{b}-lr{f:g}", f)


H, U = {"category": "harmless"}, {"category": "unscored"}
ALL: tuple[Planted, ...] = (
    # -- calibration families ---------------------------------------------------------------------
    case(_sigmoid("mobilenet-v1"), "mobilenet-v1", "ReLU6 -> sigmoid", V, ("saturating_activation",),
         ("mobilenet_v1.layer",)),
    case(_scaled("mobilenet-v1", 0.01), "mobilenet-v1", "weights x0.01", V, ("init_too_small",),
         ("mobilenet_v1.layer",)),
    case(_scaled("mobilenet-v2", 0.01), "mobilenet-v2", "weights x0.01", V, ("init_too_small",),
         ("mobilenet_v2.layer",)),
    case(_lr("vit", 100), "vit", "lr x100", DIVERGES, LR, (), "trained", truth="cost"),
    case(_lr("dinov2", 100), "dinov2", "lr x100", DIVERGES, LR, (), "trained", truth="cost"),
    case(_nores("gpt-neox"), "gpt-neox", "residual stream removed (attention and MLP outputs only)", V,
         ("chain_product_depth",), ("gpt_neox.layers",), "trained", **U),
    case(fp16_params(BASE["gpt-neox"], "gpt-neox-fp16"), "gpt-neox", "model.half() + AdamW, no loss scaler", NAN,
         UNDER, (), "trained", truth="cost"),
    case(_scaled("gemma", 0.01), "gemma", "weights x0.01", V, ("init_too_small",), ("model.layers",), "init"),
    case(_scaled("beit", 10), "beit", "weights x10", **H),
    case(_scaled("mobilenet-v1", 10), "mobilenet-v1", "weights x10", **H),
    case(_scaled("gpt-neox", 10), "gpt-neox", "weights x10", **H),
    case(_sigmoid("convnext"), "convnext", "GELU -> sigmoid", **H),
    case(_sigmoid("t5"), "t5", "ReLU -> sigmoid", **H),
    case(_sigmoid("mobilenet-v2"), "mobilenet-v2", "ReLU6 -> sigmoid", **H),
    case(_lr("lstm-lm", 100), "lstm-lm", "lr x100", **H),
    case(_lr("albert", 100), "albert", "lr x100", **H),
    case(_scaled("vit", 0.01), "vit", "weights x0.01", V, ("init_too_small",), ("vit.layers",), "init", **U),
    case(_sigmoid("vit"), "vit", "GELU -> sigmoid", V, ("saturating_activation",), ("vit.layers",), **U),
    case(_nores("regnet"), "regnet", "identity shortcuts removed", E, ("chain_product_depth",),
         ("regnet.encoder",), **U),
    case(_scaled("regnet", 0.01), "regnet", "weights x0.01", V, ("init_too_small",), ("regnet.encoder",), **U),
    case(_lr("t5", 100), "t5", "lr x100", DIVERGES, LR, (), "trained", truth="cost", **U),
    case(_lr("phi", 100), "phi", "lr x100", DIVERGES, LR, (), "trained", truth="cost", **U),
    case(fp16_autocast(BASE["convnext"], "convnext-fp16"), "convnext", "fp16 autocast, no GradScaler",
         frozenset({"vanishing", "stalled_layers"}), ("precision_underflow",), ("convnext.encoder",), "init", **H),
    # -- held-out families ------------------------------------------------------------------------
    case(derive(BASE["efficientnet"], "efficientnet-library-init"), "efficientnet-bn1",
         "none: the library's own init, BatchNorm weights ~ N(0, 0.02)", V, ("init_too_small",),
         ("efficientnet.encoder",)),
    case(_scaled("bert", 10), "bert", "weights x10", E, ("init_too_large",), ("bert.encoder",), "init"),
    case(_scaled("gpt2", 0.01), "gpt2", "weights x0.01", V, ("init_too_small",), ("transformer.h",), "init"),
    case(_nores("llama"), "llama", "residual stream removed", V, ("chain_product_depth",), ("model.layers",),
         "trained"),
    case(_lr("gpt2", 100), "gpt2", "lr x100", DIVERGES, LR, (), "trained", truth="cost"),
    case(_lr("resnet-bottleneck", 100), "resnet-bottleneck", "lr x100", DIVERGES | V, LR, (), "trained",
         truth="cost"),  # the oracle also measured vanishing after training: -2.5 decades first/last block
    case(_lr("bert", 10), "bert", "post-LN, 12 layers, lr 1e-2 without warmup", V, LR, ("bert.encoder",),
         "trained"),
    case(fp16_params(BASE["bert"], "bert-fp16"), "bert", "model.half() + AdamW, no loss scaler", NAN, UNDER, (),
         "trained", truth="cost"),
    case(_scaled("resnet-bottleneck", 10), "resnet-bottleneck", "weights x10", **H),
    case(_scaled("llama", 10), "llama", "weights x10", **H),
    case(_scaled("llama", 0.01), "llama", "weights x0.01", **H),
    case(_sigmoid("llama"), "llama", "SiLU -> sigmoid (in SwiGLU)", **H),
    case(_scaled("gpt2", 10), "gpt2", "weights x10", E, ("init_too_large",), ("transformer.h",), "init", **U),
    case(_scaled("bert", 0.01), "bert", "weights x0.01", V, ("init_too_small",), ("bert.encoder",), "init"),
    case(_scaled("resnet-bottleneck", 0.01), "resnet-bottleneck", "weights x0.01", V, ("init_too_small",),
         ("resnet.encoder",), **U),
    case(_nores("resnet-bottleneck"), "resnet-bottleneck", "identity shortcuts removed", E,
         ("chain_product_depth",), ("resnet.encoder",), **U),
    case(_lr("llama", 30), "llama", "pre-LN, 12 layers, lr 3e-2 without warmup", DIVERGES, LR, (), "trained",
         truth="cost", **U),
    case(_sigmoid("gpt2"), "gpt2", "GELU -> sigmoid", V, ("saturating_activation",), ("transformer.h",), **U),
    case(_sigmoid("resnet-bottleneck"), "resnet-bottleneck", "ReLU -> sigmoid", V, ("saturating_activation",),
         ("resnet.encoder",), **U),
    case(_sigmoid("bert"), "bert", "GELU -> sigmoid", V, ("saturating_activation",), ("bert.encoder",), **U),
)
PLANTED: tuple[Planted, ...] = tuple(p for p in ALL if p.extra["category"] == "planted")
HARMLESS: tuple[Planted, ...] = tuple(p for p in ALL if p.extra["category"] == "harmless")  # expected healthy
UNSCORED: tuple[Planted, ...] = tuple(p for p in ALL if p.extra["category"] == "unscored")  # judged, not scored
