"""How each fault is planted in a zoo recipe: config changes, scaled init, learning rate, precision,
residual connections removed. Each returns a new ZooModel (zoo_base.derive) under the planted name.
"""
from __future__ import annotations

import re
import types
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn
from zoo_base import ZooModel, derive
from zoo_models import hf


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


def gpt2_plain(self: nn.Module, hidden_states: Tensor, *args, attention_mask=None, **kwargs) -> Tensor:
    h, _ = self.attn(self.ln_1(hidden_states), attention_mask=attention_mask, **kwargs)
    return self.mlp(self.ln_2(h))


def vit_plain(self: nn.Module, hidden_states: Tensor, attention_mask=None, **kwargs) -> Tensor:
    h, _ = self.attention(self.layernorm_before(hidden_states), attention_mask, **kwargs)
    return self.dropout(self.mlp(self.layernorm_after(self.dropout(h))))


def llama_plain(self: nn.Module, hidden_states: Tensor, attention_mask=None, position_ids=None,
                 cache=None, use_cache=False, position_embeddings=None, **kwargs) -> Tensor:
    h, _ = self.self_attn(hidden_states=self.input_layernorm(hidden_states), attention_mask=attention_mask,
                          position_ids=position_ids, cache=cache, use_cache=use_cache,
                          position_embeddings=position_embeddings, **kwargs)
    return self.mlp(self.post_attention_layernorm(h))


def without_residuals(pattern: str, forward: Callable) -> Callable[[nn.Module], nn.Module]:
    """A patch: every block whose name fully matches `pattern` runs `forward` (its branches, no stream)."""
    def patch(model: nn.Module) -> nn.Module:
        for n, mod in model.named_modules():
            if re.fullmatch(pattern, n):
                mod.forward = types.MethodType(forward, mod)
        return model
    return patch


def neox_plain(self: nn.Module, hidden_states: Tensor, attention_mask=None, position_ids=None, use_cache=False,
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
