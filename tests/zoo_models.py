"""The zoo's catalogue: each architecture from a small config in code, at its library's default init.

Widths and resolutions are small (32x32 images, 16-token sequences over 128 tokens), depths are
the real ones. Learning rates are the usual small-scale AdamW choices: 1e-3 for vision models and
pre-LN decoders, 1e-4 for post-LN encoders (BERT-like; without warmup they need the smaller step).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import transformers as T
from torch import Tensor, nn
from zoo_base import (
    BATCHES,
    BOS,
    CLASSES,
    EOS,
    IMAGE,
    PAD,
    SEQ,
    VOCAB,
    ZooModel,
    adamw,
    half_of,
    hf_step,
    next_token_step,
)

T.logging.set_verbosity_error()

TOKENS = {"vocab_size": VOCAB, "pad_token_id": PAD, "bos_token_id": BOS, "eos_token_id": EOS}


def hf(model_cls: str, config_cls: str, **config) -> Callable[[int], nn.Module]:
    """A factory: seed -> transformers.<model_cls>(<config_cls>(**config)) at the library's default init."""
    def make(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return getattr(T, model_cls)(getattr(T, config_cls)(**config)).train()
    make.__qualname__ = f"hf({model_cls})"
    return make


def vision(model_cls: str, config_cls: str, **config) -> Callable[[int], nn.Module]:
    """An image classifier over CLASSES classes."""
    return hf(model_cls, config_cls, num_labels=CLASSES, **config)


class RecurrentLM(nn.Module):
    """Embedding -> 2-layer LSTM or GRU -> decoder (PyTorch's default initialisation)."""

    def __init__(self, cell: str = "LSTM", dim: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.rnn = getattr(nn, cell)(dim, dim, num_layers=2, batch_first=True)
        self.decoder = nn.Linear(dim, VOCAB)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.decoder(self.rnn(self.embed(tokens))[0])


class TorchTransformerLM(nn.Module):
    """torch.nn.TransformerEncoder (post-LN, causal mask) as a 6-layer language model."""

    def __init__(self, dim: int = 64, layers: int = 6) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.pos = nn.Parameter(torch.zeros(SEQ, dim))
        layer = nn.TransformerEncoderLayer(dim, nhead=4, dim_feedforward=4 * dim, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)
        self.decoder = nn.Linear(dim, VOCAB)

    def forward(self, tokens: Tensor) -> Tensor:
        n = tokens.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(n)
        return self.decoder(self.encoder(self.embed(tokens) + self.pos[:n], mask=mask, is_causal=True))


def torch_model(cls: type, **kw) -> Callable[[int], nn.Module]:
    """A factory for one of the plain-PyTorch models above."""
    def make(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return cls(**kw)
    return make


def entry(name: str, family: str, task: str, make: Callable, lr: float, blocks: str, *,
          step: Callable = hf_step, notes: str = "") -> ZooModel:
    """One zoo member with its task's batches and AdamW at `lr`."""
    return ZooModel(name=name, family=family, half=half_of(family), task=task, make=make, batches=BATCHES[task],
                    train_step=step, make_optimizer=adamw(lr), notes=notes, blocks=blocks)


IMG = "image-classification"
_RESNET = {"embedding_size": 16, "hidden_act": "relu"}

MODELS: tuple[ZooModel, ...] = (
    # -- vision ------------------------------------------------------------------------------
    entry("resnet-basic", "resnet", IMG, vision(
        "ResNetForImageClassification", "ResNetConfig", layer_type="basic", depths=[2, 2, 2, 2],
        hidden_sizes=[16, 32, 64, 128], **_RESNET), 1e-3,
        r"resnet\.encoder\.stages\.\d+\.layers\.\d+", notes="ResNet-18 stage depths"),
    entry("resnet-bottleneck", "resnet", IMG, vision(
        "ResNetForImageClassification", "ResNetConfig", layer_type="bottleneck", depths=[3, 4, 6, 3],
        hidden_sizes=[32, 64, 128, 256], **_RESNET), 1e-3,
        r"resnet\.encoder\.stages\.\d+\.layers\.\d+", notes="ResNet-50 stage depths"),
    entry("convnext", "convnext", IMG, vision(
        "ConvNextForImageClassification", "ConvNextConfig", depths=[3, 3, 9, 3], hidden_sizes=[16, 32, 64, 128],
        image_size=IMAGE), 1e-3,
        r"convnext\.encoder\.stages\.\d+\.layers\.\d+", notes="ConvNeXt-T depths, LayerScale 1e-6"),
    entry("vit", "vit", IMG, vision(
        "ViTForImageClassification", "ViTConfig", image_size=IMAGE, patch_size=8, hidden_size=64,
        num_hidden_layers=12, num_attention_heads=4, intermediate_size=128), 1e-3,
        r"vit\.encoder\.layer\.\d+", notes="ViT-B depth (12), patch 8 (16 tokens)"),
    # -- text --------------------------------------------------------------------------------
    entry("gpt2", "gpt2", "causal-lm", hf(
        "GPT2LMHeadModel", "GPT2Config", n_positions=SEQ, n_embd=64, n_layer=12, n_head=4, **TOKENS), 1e-3,
        r"transformer\.h\.\d+", notes="GPT-2 small depth (12), tied embeddings"),
    entry("bert", "bert", "masked-lm", hf(
        "BertForMaskedLM", "BertConfig", hidden_size=64, num_hidden_layers=12, num_attention_heads=4,
        intermediate_size=256, max_position_embeddings=SEQ, **TOKENS), 1e-4,
        r"bert\.encoder\.layer\.\d+", notes="BERT-base depth (12), post-LN"),
    entry("lstm-lm", "rnn", "causal-lm", torch_model(RecurrentLM, cell="LSTM"), 3e-3,
          r"rnn", step=next_token_step, notes="2-layer LSTM language model"),
)
