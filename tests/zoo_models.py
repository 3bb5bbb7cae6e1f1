"""The zoo's catalogue: each architecture from a small config in code, at its library's default init.

Widths and resolutions are small (32x32 images, 16-token sequences over 128 tokens), depths are
the real ones. The optimizer is AdamW at the usual small-scale learning rate 1e-3 (weight decay
0.01, no schedule), except where a model does not learn at 1e-3 in 50 steps (swinv2: 3e-4); the
LSTM/GRU language models use 3e-3. Measured with `python benchmarks/zoo.py --lr-sweep`.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor, nn
from zoo_base import (
    BATCHES,
    BOS,
    CLASSES,
    EOS,
    IMAGE,
    PAD,
    SEQ,
    SEQ_CLASSES,
    VOCAB,
    ZooModel,
    adamw,
    half_of,
    hf_step,
    image_batches,
    next_token_step,
)

try:
    import transformers as T
except ImportError:  # conftest's rule: a failure under CI=true (`make setup` installs it), a skip elsewhere
    from conftest import missing  # (only here: with transformers, the zoo imports without pytest)

    missing("transformers")

T.logging.set_verbosity_error()
logging.getLogger("kernels").setLevel(logging.ERROR)  # offline: 'Skipping publisher trust check' per model

TOKENS = {"vocab_size": VOCAB, "pad_token_id": PAD, "bos_token_id": BOS, "eos_token_id": EOS}


def hf(model_cls: str, config_cls: str, **config) -> Callable[[int], nn.Module]:
    """A factory: seed -> transformers.<model_cls>(<config_cls>(**config)) at the library's default init."""
    def make(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return getattr(T, model_cls)(getattr(T, config_cls)(**config)).train()
    make.__qualname__ = f"hf({model_cls})"
    make.hf = (model_cls, config_cls, config)  # read by zoo_planted to rebuild with config changes
    return make


def batchnorm_weights_one(make: Callable[[int], nn.Module]) -> Callable[[int], nn.Module]:
    """`make`, then every BatchNorm weight set to 1."""
    def fixed(seed: int) -> nn.Module:
        model = make(seed)
        for mod in model.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                nn.init.ones_(mod.weight)
        return model
    fixed.hf = make.hf
    return fixed


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
    make.torch = (cls, kw)
    return make


def entry(name: str, family: str, task: str, make: Callable, lr: float, blocks: str, *,
          step: Callable = hf_step, batches: Callable | None = None, expected: str = "healthy",
          notes: str = "") -> ZooModel:
    """One zoo member with its task's batches and AdamW at `lr`."""
    return ZooModel(name=name, family=family, half=half_of(family), task=task, make=make,
                    batches=batches or BATCHES[task],
                    train_step=step, make_optimizer=adamw(lr), expected=expected, notes=notes, blocks=blocks)


IMG = "image-classification"

_RESNET = {"embedding_size": 16, "hidden_act": "relu"}
_VIT = {"image_size": IMAGE, "patch_size": 8, "hidden_size": 64, "num_hidden_layers": 12, "num_attention_heads": 4}
_BERT = {"hidden_size": 64, "num_hidden_layers": 12, "num_attention_heads": 4, "intermediate_size": 256,
         "max_position_embeddings": SEQ + 2, **TOKENS}
_DECODER = {"hidden_size": 64, "num_hidden_layers": 12, "num_attention_heads": 4, "max_position_embeddings": SEQ,
            **TOKENS}
SEQ_CLS, MLM, CLM, S2S = "sequence-classification", "masked-lm", "causal-lm", "seq2seq"
_STAGES = r"{}\.encoder\.stages\.\d+\.layers\.\d+"

_EFFICIENTNET = vision("EfficientNetForImageClassification", "EfficientNetConfig", image_size=IMAGE,
                       width_coefficient=0.25, depth_coefficient=1.0, hidden_dim=320)

MODELS: tuple[ZooModel, ...] = (
    # -- vision ------------------------------------------------------------------------------
    entry("resnet-basic", "resnet", IMG, vision(
        "ResNetForImageClassification", "ResNetConfig", layer_type="basic", depths=[2, 2, 2, 2],
        hidden_sizes=[16, 32, 64, 128], **_RESNET), 1e-3, _STAGES.format("resnet"), notes="ResNet-18 stage depths"),
    entry("resnet-bottleneck", "resnet", IMG, vision(
        "ResNetForImageClassification", "ResNetConfig", layer_type="bottleneck", depths=[3, 4, 6, 3],
        hidden_sizes=[32, 64, 128, 256], **_RESNET), 1e-3, _STAGES.format("resnet"), notes="ResNet-50 stage depths"),
    entry("convnext", "convnext", IMG, vision(
        "ConvNextForImageClassification", "ConvNextConfig", depths=[3, 3, 9, 3], hidden_sizes=[16, 32, 64, 128],
        image_size=IMAGE), 1e-3, _STAGES.format("convnext"), notes="ConvNeXt-T depths, LayerScale 1e-6"),
    entry("convnextv2", "convnext", IMG, vision(
        "ConvNextV2ForImageClassification", "ConvNextV2Config", depths=[3, 3, 9, 3], hidden_sizes=[16, 32, 64, 128],
        image_size=IMAGE), 1e-3, _STAGES.format("convnextv2"), notes="ConvNeXtV2-T depths, GRN"),
    entry("vit", "vit", IMG, vision("ViTForImageClassification", "ViTConfig", intermediate_size=128, **_VIT), 1e-3,
          r"vit\.layers\.\d+", notes="ViT-B depth (12), patch 8 (16 tokens)"),
    entry("deit", "vit", IMG, vision("DeiTForImageClassification", "DeiTConfig", intermediate_size=128, **_VIT),
          1e-3, r"deit\.layers\.\d+", notes="DeiT-S depth (12)"),
    entry("dinov2", "dinov2", IMG, vision("Dinov2ForImageClassification", "Dinov2Config", mlp_ratio=2, **_VIT),
          1e-3, r"dinov2\.encoder\.layer\.\d+", notes="DINOv2 depth (12), LayerScale 1.0"),
    entry("beit", "beit", IMG, vision("BeitForImageClassification", "BeitConfig", intermediate_size=128,
                                      use_relative_position_bias=True, **_VIT),
          1e-3, r"beit\.layers\.\d+", notes="BEiT-B depth (12), LayerScale 0.1, relative position bias"),
    entry("swin", "swin", IMG, vision(
        "SwinForImageClassification", "SwinConfig", image_size=IMAGE, patch_size=2, embed_dim=16,
        depths=[2, 2, 6, 2], num_heads=[1, 2, 4, 8], window_size=2), 1e-3,
        r"swin\.encoder\.layers\.\d+\.blocks\.\d+", notes="Swin-T depths, window 2 (16x16 patches)"),
    entry("swinv2", "swin", IMG, vision(
        "Swinv2ForImageClassification", "Swinv2Config", image_size=IMAGE, patch_size=2, embed_dim=16,
        depths=[2, 2, 6, 2], num_heads=[1, 2, 4, 8], window_size=2), 3e-4,
        r"swinv2\.encoder\.layers\.\d+\.blocks\.\d+",
        notes="SwinV2-T depths, post-norm in the blocks; at lr 1e-3 it does not learn in 50 steps"),
    entry("regnet", "regnet", IMG, vision(
        "RegNetForImageClassification", "RegNetConfig", embedding_size=16, hidden_sizes=[16, 32, 64, 128],
        depths=[1, 3, 6, 6], groups_width=8, layer_type="y"), 1e-3, _STAGES.format("regnet"),
        notes="RegNetY-400MF depths, squeeze-excitation"),
    entry("mobilenet-v1", "mobilenet", IMG, vision(
        "MobileNetV1ForImageClassification", "MobileNetV1Config", image_size=IMAGE, depth_multiplier=0.25,
        min_depth=8, classifier_dropout_prob=0.001), 1e-3, r"mobilenet_v1\.layer\.\d+",
        notes="13 depthwise-separable pairs, no residuals; classifier dropout 0.001 (the config's 0.999 is TF's "
              "keep probability)"),
    entry("mobilenet-v2", "mobilenet", IMG, vision(
        "MobileNetV2ForImageClassification", "MobileNetV2Config", image_size=IMAGE, depth_multiplier=0.35), 1e-3,
        r"mobilenet_v2\.layer\.\d+", notes="17 inverted-residual blocks"),
    entry("efficientnet", "efficientnet", IMG, _EFFICIENTNET, 1e-3, r"efficientnet\.encoder\.blocks\.\d+",
          expected="vanishing",
          notes="EfficientNet-B0 depths, squeeze-excitation, swish. NOT healthy at its library init: BatchNorm "
                "weights are drawn from N(0, 0.02), so activations shrink ~50x per norm layer (1e-35 at the head) "
                "and the loss stays at ln(10); scored as the planted case efficientnet-library-init"),
    entry("efficientnet-bn1", "efficientnet", IMG, batchnorm_weights_one(_EFFICIENTNET), 1e-3,
          r"efficientnet\.encoder\.blocks\.\d+",
          notes="the same with BatchNorm weights 1, as in the reference implementations (timm, torchvision)"),
    entry("bit", "bit", IMG, vision(
        "BitForImageClassification", "BitConfig", embedding_size=16, hidden_sizes=[32, 64, 128, 256],
        depths=[3, 4, 6, 3], layer_type="preactivation", num_groups=8), 1e-3, _STAGES.format("bit"),
        notes="BiT-R50 depths, pre-activation, GroupNorm + weight standardisation"),
    entry("levit", "levit", IMG, vision(
        "LevitForImageClassification", "LevitConfig", image_size=64, hidden_sizes=[32, 48, 64],
        num_attention_heads=[2, 3, 4], key_dim=[8, 8, 8], depths=[4, 4, 4]), 1e-3,
        r"levit\.encoder\.stages\.\d+\.layers\.\d+", batches=partial(image_batches, size=64),
        notes="LeViT-128S depths, 64x64 images"),
    entry("poolformer", "poolformer", IMG, vision(
        "PoolFormerForImageClassification", "PoolFormerConfig", hidden_sizes=[16, 32, 64, 128], depths=[2, 2, 6, 2]),
        1e-3, r"poolformer\.encoder\.block\.\d+\.\d+", notes="PoolFormer-S12 depths, LayerScale 1e-5"),
    # -- text: decoders (pre-LN) ------------------------------------------------------------
    entry("gpt2", "gpt2", CLM, hf(
        "GPT2LMHeadModel", "GPT2Config", n_positions=SEQ, n_embd=64, n_layer=12, n_head=4, **TOKENS), 1e-3,
        r"transformer\.h\.\d+", notes="GPT-2 small depth (12), tied embeddings"),
    entry("gpt-neo", "gpt-neo", CLM, hf(
        "GPTNeoForCausalLM", "GPTNeoConfig", hidden_size=64, num_layers=12, num_heads=4,
        attention_types=[[["global", "local"], 6]], window_size=8, max_position_embeddings=SEQ, **TOKENS), 1e-3,
        r"transformer\.h\.\d+", notes="global/local attention alternating"),
    entry("gpt-neox", "gpt-neox", CLM, hf("GPTNeoXForCausalLM", "GPTNeoXConfig", intermediate_size=256, **_DECODER),
          1e-3, r"gpt_neox\.layers\.\d+", notes="Pythia-like: parallel residual, partial rotary"),
    entry("llama", "llama", CLM, hf("LlamaForCausalLM", "LlamaConfig", intermediate_size=172, **_DECODER), 1e-3,
          r"model\.layers\.\d+", notes="RMSNorm, SwiGLU, rotary"),
    entry("mistral", "llama", CLM, hf("MistralForCausalLM", "MistralConfig", intermediate_size=172,
                                      num_key_value_heads=2, **_DECODER), 1e-3,
          r"model\.layers\.\d+", notes="grouped-query attention"),
    entry("qwen2", "llama", CLM, hf("Qwen2ForCausalLM", "Qwen2Config", intermediate_size=172, num_key_value_heads=2,
                                    **_DECODER), 1e-3, r"model\.layers\.\d+", notes="q/k/v biases"),
    entry("gemma", "gemma", CLM, hf("GemmaForCausalLM", "GemmaConfig", intermediate_size=128, num_key_value_heads=1,
                                    head_dim=16, **_DECODER), 1e-3,
          r"model\.layers\.\d+", notes="multi-query attention, GeGLU, (1+w) RMSNorm, scaled embeddings"),
    entry("opt", "opt", CLM, hf("OPTForCausalLM", "OPTConfig", hidden_size=64, num_hidden_layers=12,
                                num_attention_heads=4, ffn_dim=256, word_embed_proj_dim=64,
                                max_position_embeddings=SEQ, **TOKENS), 1e-3,
          r"model\.decoder\.layers\.\d+", notes="OPT-125m depth"),
    entry("bloom", "bloom", CLM, hf("BloomForCausalLM", "BloomConfig", hidden_size=64, n_layer=12, n_head=4,
                                    **TOKENS), 1e-3, r"transformer\.h\.\d+", notes="ALiBi, embedding LayerNorm"),
    entry("phi", "phi", CLM, hf("PhiForCausalLM", "PhiConfig", intermediate_size=256, **_DECODER), 1e-3,
          r"model\.layers\.\d+", notes="parallel attention + MLP, partial rotary"),
    # -- text: encoders (post-LN) -----------------------------------------------------------
    entry("bert", "bert", MLM, hf("BertForMaskedLM", "BertConfig", **_BERT), 1e-3,
          r"bert\.encoder\.layer\.\d+", notes="BERT-base depth (12), post-LN"),
    entry("roberta", "bert", MLM, hf("RobertaForMaskedLM", "RobertaConfig", **_BERT), 1e-3,
          r"roberta\.encoder\.layer\.\d+", notes="RoBERTa-base depth (12)"),
    entry("electra", "bert", SEQ_CLS, hf("ElectraForSequenceClassification", "ElectraConfig", embedding_size=32,
                                         num_labels=SEQ_CLASSES, **_BERT), 1e-3,
          r"electra\.encoder\.layer\.\d+", notes="ELECTRA-base depth, factorised embeddings"),
    entry("distilbert", "bert", SEQ_CLS, hf("DistilBertForSequenceClassification", "DistilBertConfig", dim=64,
                                            n_layers=6, n_heads=4, hidden_dim=256, num_labels=SEQ_CLASSES,
                                            max_position_embeddings=SEQ, vocab_size=VOCAB, pad_token_id=PAD), 1e-3,
          r"distilbert\.transformer\.layer\.\d+", notes="DistilBERT depth (6)"),
    entry("albert", "albert", MLM, hf("AlbertForMaskedLM", "AlbertConfig", embedding_size=32, **_BERT), 1e-3,
          r"albert\.encoder\.albert_layer_groups\.\d+", notes="12 applications of one shared layer"),
    entry("deberta-v2", "deberta", MLM, hf("DebertaV2ForMaskedLM", "DebertaV2Config", relative_attention=True,
                                           pos_att_type=["p2c", "c2p"], position_biased_input=False, **_BERT), 1e-3,
          r"deberta\.encoder\.layer\.\d+", notes="disentangled relative attention"),
    # -- text: encoder-decoders -------------------------------------------------------------
    entry("t5", "t5", S2S, hf("T5ForConditionalGeneration", "T5Config", d_model=64, d_kv=16, d_ff=128, num_layers=6,
                              num_decoder_layers=6, num_heads=4, decoder_start_token_id=PAD, **TOKENS), 1e-3,
          r"(encoder|decoder)\.block\.\d+", notes="T5-small depth (6+6), RMSNorm, relative bias"),
    entry("bart", "bart", S2S, hf("BartForConditionalGeneration", "BartConfig", d_model=64, encoder_layers=6,
                                  decoder_layers=6, encoder_attention_heads=4, decoder_attention_heads=4,
                                  encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=SEQ,
                                  decoder_start_token_id=EOS, **TOKENS), 1e-3,
          r"model\.(encoder|decoder)\.layers\.\d+", notes="BART-base depth (6+6), post-LN"),
    # -- plain PyTorch ------------------------------------------------------------------------
    entry("lstm-lm", "rnn", CLM, torch_model(RecurrentLM, cell="LSTM"), 3e-3, r"rnn", step=next_token_step,
          notes="2-layer LSTM language model"),
    entry("gru-lm", "rnn", CLM, torch_model(RecurrentLM, cell="GRU"), 3e-3, r"rnn", step=next_token_step,
          notes="2-layer GRU language model"),
    entry("torch-transformer", "torch-transformer", CLM, torch_model(TorchTransformerLM), 1e-3,
          r"encoder\.layers\.\d+", step=next_token_step, notes="nn.TransformerEncoder, post-LN, 6 layers"),
)
