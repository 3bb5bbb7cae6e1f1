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
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import Tensor, nn
from zoo_base import Planted, ZooModel, derive
from zoo_models import MODELS, hf

BASE = {m.name: m for m in MODELS}


# -- how each fault is planted ------------------------------------------------------------------
def config_change(base: ZooModel, name: str, **overrides) -> ZooModel:
    """The base rebuilt from its config with `overrides` (e.g. hidden_act="sigmoid")."""
    model_cls, config_cls, config = base.make.hf
    return derive(base, name, make=hf(model_cls, config_cls, **{**config, **overrides}))


def _scale_weights(model: nn.Module, factor: float) -> nn.Module:
    with torch.no_grad():
        for mod in model.modules():
            w = getattr(mod, "weight", None)
            if isinstance(w, nn.Parameter) and w.dim() >= 2 and not isinstance(mod, nn.modules.batchnorm._NormBase):
                w.mul_(factor)
    return model


def scaled_init(base: ZooModel, name: str, factor: float) -> ZooModel:
    """Every weight matrix / kernel / embedding (dim >= 2) multiplied by `factor` after the library's init."""
    return derive(base, name, make=lambda seed: _scale_weights(base.make(seed), factor))


def lr_times(base: ZooModel, name: str, factor: float) -> ZooModel:
    """The base's optimizer with every group's learning rate multiplied by `factor`."""
    def make_optimizer(params: Iterable) -> torch.optim.Optimizer:
        opt = base.make_optimizer(params)
        for g in opt.param_groups:
            g["lr"] *= factor
        return opt
    return derive(base, name, make_optimizer=make_optimizer)


def fp16_autocast(base: ZooModel, name: str) -> ZooModel:
    """The base's step under torch.autocast("cpu", float16), without a GradScaler."""
    def train_step(model: nn.Module, batch: object) -> Tensor:
        with torch.autocast("cpu", dtype=torch.float16):
            return base.train_step(model, batch)
    return derive(base, name, train_step=train_step)


def patched(base: ZooModel, name: str, patch: Callable[[nn.Module], nn.Module]) -> ZooModel:
    """The base model with `patch` applied after its construction (e.g. shortcuts removed)."""
    return derive(base, name, make=lambda seed: patch(base.make(seed)))


class _Zero(nn.Module):
    """A shortcut that carries nothing: the block's output is its residual branch alone."""

    def forward(self, x: Tensor) -> Tensor:
        return x.new_zeros(())


def resnet_without_shortcuts(model: nn.Module) -> nn.Module:
    """HF ResNet: every identity shortcut replaced by zero (projection shortcuts stay)."""
    for mod in model.modules():
        if isinstance(getattr(mod, "shortcut", None), nn.Identity):
            mod.shortcut = _Zero()
    return model


def _gpt2_plain(self: nn.Module, hidden_states: Tensor, *args, attention_mask=None, **kwargs) -> Tensor:
    h, _ = self.attn(self.ln_1(hidden_states), attention_mask=attention_mask, **kwargs)
    return self.mlp(self.ln_2(h))


def _vit_plain(self: nn.Module, hidden_states: Tensor, attention_mask=None, **kwargs) -> Tensor:
    h, _ = self.attention(self.layernorm_before(hidden_states), attention_mask, **kwargs)
    return self.dropout(self.mlp(self.layernorm_after(self.dropout(h))))


def _llama_plain(self: nn.Module, hidden_states: Tensor, attention_mask=None, position_ids=None,
                 cache=None, use_cache=False, position_embeddings=None, **kwargs) -> Tensor:
    h, _ = self.self_attn(hidden_states=self.input_layernorm(hidden_states), attention_mask=attention_mask,
                          position_ids=position_ids, cache=cache, use_cache=use_cache,
                          position_embeddings=position_embeddings, **kwargs)
    return self.mlp(self.post_attention_layernorm(h))


def without_residuals(pattern: str, forward: Callable) -> Callable[[nn.Module], nn.Module]:
    """A patch: every block whose name fully matches `pattern` runs `forward` (its branches, no stream)."""
    def patch(model: nn.Module) -> nn.Module:
        import re
        import types

        for n, mod in model.named_modules():
            if re.fullmatch(pattern, n):
                mod.forward = types.MethodType(forward, mod)
        return model
    return patch


def _neox_plain(self: nn.Module, hidden_states: Tensor, attention_mask=None, position_ids=None, use_cache=False,
                layer_past=None, position_embeddings=None, **kwargs) -> Tensor:
    attn, _ = self.attention(self.input_layernorm(hidden_states), attention_mask=attention_mask,
                             position_ids=position_ids, layer_past=layer_past, use_cache=use_cache,
                             position_embeddings=position_embeddings, **kwargs)
    return self.post_mlp_dropout(self.mlp(self.post_attention_layernorm(hidden_states))) + attn


def fp16_params(base: ZooModel, name: str) -> ZooModel:
    """The whole model in float16 (model.half(), inputs cast), trained by the base's optimizer, no scaler."""
    def train_step(model: nn.Module, batch: dict) -> Tensor:
        return base.train_step(model, {k: v.half() if v.is_floating_point() else v for k, v in batch.items()})
    return derive(base, name, make=lambda seed: base.make(seed).half(), train_step=train_step)


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
    "gpt2": without_residuals(r"transformer\.h\.\d+", _gpt2_plain),
    "vit": without_residuals(r"vit\.layers\.\d+", _vit_plain),
    "llama": without_residuals(r"model\.layers\.\d+", _llama_plain),
    "gpt-neox": without_residuals(r"gpt_neox\.layers\.\d+", _neox_plain),
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
         ("chain_product_depth",), ("gpt_neox.layers",), "trained"),
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
         frozenset({"vanishing", "stalled_layers"}), ("precision_underflow",), ("convnext.encoder",), "init", **U),
    # -- held-out families ------------------------------------------------------------------------
    case(derive(BASE["efficientnet"], "efficientnet-library-init"), "efficientnet-bn1",
         "none: the library's own init, BatchNorm weights ~ N(0, 0.02)", V, ("init_too_small",),
         ("efficientnet.encoder",)),
    case(_scaled("bert", 10), "bert", "weights x10", E, ("init_too_large",), ("bert.encoder",), "init"),
    case(_scaled("gpt2", 0.01), "gpt2", "weights x0.01", V, ("init_too_small",), ("transformer.h",), "init"),
    case(_nores("llama"), "llama", "residual stream removed", V, ("chain_product_depth",), ("model.layers",),
         "trained"),
    case(_lr("gpt2", 100), "gpt2", "lr x100", DIVERGES, LR, (), "trained", truth="cost"),
    case(_lr("resnet-bottleneck", 100), "resnet-bottleneck", "lr x100", DIVERGES, LR, (), "trained", truth="cost"),
    case(_lr("bert", 10), "bert", "post-LN, 12 layers, lr 1e-2 without warmup", V, LR, ("bert.encoder",),
         "trained"),
    case(fp16_params(BASE["bert"], "bert-fp16"), "bert", "model.half() + AdamW, no loss scaler", NAN, UNDER, (),
         "trained", truth="cost"),
    case(_scaled("resnet-bottleneck", 10), "resnet-bottleneck", "weights x10", **H),
    case(_scaled("llama", 10), "llama", "weights x10", **H),
    case(_scaled("llama", 0.01), "llama", "weights x0.01", **H),
    case(_sigmoid("llama"), "llama", "SiLU -> sigmoid (in SwiGLU)", **H),
    case(_scaled("gpt2", 10), "gpt2", "weights x10", E, ("init_too_large",), ("transformer.h",), "init", **U),
    case(_scaled("bert", 0.01), "bert", "weights x0.01", V, ("init_too_small",), ("bert.encoder",), "init", **U),
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
