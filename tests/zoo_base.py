"""The zoo's building blocks: the recipe dataclasses, the family split, synthetic tasks.

Data are a few fixed batches per seed. Labels come from a fixed random *teacher* so that the
loss can fall: images are classified by a random linear map of their 8x8-pooled pixels; token
sequences follow a random low-entropy Markov chain (a causal LM can learn the next token, a
masked LM the masked one); a sequence's class is the argmax of a random bag-of-tokens score;
a seq2seq target maps each source token through a fixed random permutation.
"""
from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

# The split, fixed at the first commit before anything was tuned: the 27 families planned then,
# sorted by name, alternate calibration / held_out. Never edit. Later families: half_of().
FAMILIES: dict[str, str] = {
    "albert": "calibration", "bart": "held_out", "beit": "calibration", "bert": "held_out",
    "bit": "calibration", "bloom": "held_out", "convnext": "calibration", "deberta": "held_out",
    "dinov2": "calibration", "efficientnet": "held_out", "gemma": "calibration", "gpt-neo": "held_out",
    "gpt-neox": "calibration", "gpt2": "held_out", "levit": "calibration", "llama": "held_out",
    "mobilenet": "calibration", "opt": "held_out", "phi": "calibration", "poolformer": "held_out",
    "regnet": "calibration", "resnet": "held_out", "rnn": "calibration", "swin": "held_out",
    "t5": "calibration", "torch-transformer": "held_out", "vit": "calibration",
}
HALVES = ("calibration", "held_out")


def half_of(family: str) -> str:
    """The family's half: the fixed table, else crc32(name) % 2 (0: calibration) for later families."""
    return FAMILIES.get(family) or HALVES[zlib.crc32(family.encode()) % 2]


@dataclass(frozen=True)
class ZooModel:
    """One architecture with its usual recipe: how to build it, feed it, step it and optimise it."""

    name: str  # e.g. "convnext", "gpt2", "bert"
    family: str  # architecture family: the unit of the calibration / held-out split
    half: str  # "calibration" | "held_out"
    task: str  # "image-classification" | "causal-lm" | "masked-lm" | "seq2seq" | "sequence-classification"
    make: Callable[[int], nn.Module]  # seed -> model at its library's default init
    batches: Callable[[int, int], list]  # (seed, n) -> n synthetic batches of its task
    train_step: Callable[[nn.Module, Any], Tensor]  # (model, batch) -> scalar loss (its usual loss)
    make_optimizer: Callable[[Iterable], torch.optim.Optimizer]  # its usual optimizer
    expected: str = "healthy"  # ground truth for the unmodified model
    notes: str = ""
    blocks: str = ""  # regex (full match) over module names: the repeated blocks along the depth axis


@dataclass(frozen=True)
class Planted:
    """A pathology planted in a zoo architecture, with its ground truth (measured, see `evidence`)."""

    name: str  # e.g. "gpt2-lr100"
    base: str  # the ZooModel it modifies
    fault: str  # what was planted, in words
    model: ZooModel  # the modified recipe (make / batches / train_step / make_optimizer as planted)
    kinds: frozenset[str]  # acceptable finding kinds (graddoctor.diagnose.findings.KINDS)
    causes: tuple[str, ...]  # acceptable causes (graddoctor.diagnose.findings.CAUSES + diag's new ones)
    blocks: tuple[str, ...]  # module-name prefixes of where the fault is (localisation truth)
    when: str  # "init" | "trained" | "both": when the pathology is visible
    evidence: str  # the plain-autograd measurement behind the truth (zoo_oracle.py, numbers)
    extra: dict = field(default_factory=dict, compare=False)  # oracle parameters (steps, criteria)


def derive(base: ZooModel, name: str, **changes: Any) -> ZooModel:
    """A copy of `base` under a new name with some recipe fields replaced."""
    return replace(base, name=name, **changes)


# -- synthetic tasks ---------------------------------------------------------------------------
N_BATCHES = 4  # fixed batches per recipe (judge() and the oracle cycle them during training)
IMAGE, CLASSES = 32, 10  # 3x32x32 images, 10 classes
VOCAB, SEQ = 128, 16  # tokens 0..127; 0 pad, 1 bos / decoder start / mask, 2 eos, 3.. chain tokens
PAD, BOS, EOS, FIRST = 0, 1, 2, 3
SEQ_CLASSES = 4


def _gen(seed: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(1000 * seed + salt)


def image_batches(seed: int, n: int, batch: int = 16, size: int = IMAGE) -> list[dict]:
    """n batches of {"pixel_values": (batch, 3, size, size), "labels": (batch,)} from a random teacher."""
    g = _gen(seed, 1)
    teacher = torch.randn(3 * 8 * 8, CLASSES, generator=g)
    out = []
    for _ in range(n):
        x = torch.randn(batch, 3, size, size, generator=g)
        y = (F.adaptive_avg_pool2d(x, 8).flatten(1) @ teacher).argmax(1)
        out.append({"pixel_values": x, "labels": y})
    return out


def markov_tokens(seed: int, n: int, batch: int = 8, seq: int = SEQ) -> list[Tensor]:
    """n (batch, seq) token tensors from a random low-entropy Markov chain over tokens FIRST..VOCAB-1."""
    g = _gen(seed, 2)
    k = VOCAB - FIRST
    trans = torch.softmax(4 * torch.randn(k, k, generator=g), 1)
    out = []
    for _ in range(n):
        tok = [torch.randint(0, k, (batch,), generator=g)]
        for _ in range(seq - 1):
            tok.append(torch.multinomial(trans[tok[-1]], 1, generator=g).squeeze(1))
        out.append(torch.stack(tok, 1) + FIRST)
    return out


def causal_lm_batches(seed: int, n: int) -> list[dict]:
    """{"input_ids", "labels"} (the model shifts labels itself, as Hugging Face LMs do)."""
    return [{"input_ids": t, "labels": t.clone()} for t in markov_tokens(seed, n)]


def masked_lm_batches(seed: int, n: int) -> list[dict]:
    """15% of tokens replaced by the mask token BOS; labels -100 except at masked positions."""
    g = _gen(seed, 3)
    out = []
    for t in markov_tokens(seed, n):
        mask = torch.rand(t.shape, generator=g) < 0.15
        mask[:, 0] |= ~mask.any(1)  # every row has a masked position
        out.append({"input_ids": t.masked_fill(mask, BOS), "labels": t.masked_fill(~mask, -100)})
    return out


def seq_cls_batches(seed: int, n: int) -> list[dict]:
    """{"input_ids", "labels"}: the class is the argmax of a random bag-of-tokens score."""
    teacher = torch.randn(VOCAB, SEQ_CLASSES, generator=_gen(seed, 4))
    return [{"input_ids": t, "labels": teacher[t].sum(1).argmax(1)} for t in markov_tokens(seed, n)]


def seq2seq_batches(seed: int, n: int) -> list[dict]:
    """{"input_ids", "labels"}: each source token mapped through a fixed random permutation."""
    perm = torch.cat([torch.arange(FIRST), FIRST + torch.randperm(VOCAB - FIRST, generator=_gen(seed, 5))])
    return [{"input_ids": t, "labels": perm[t]} for t in markov_tokens(seed, n)]


BATCHES: dict[str, Callable[[int, int], list]] = {
    "image-classification": image_batches, "causal-lm": causal_lm_batches, "masked-lm": masked_lm_batches,
    "sequence-classification": seq_cls_batches, "seq2seq": seq2seq_batches,
}


def hf_step(model: nn.Module, batch: dict) -> Tensor:
    """A Hugging Face model's own loss for the batch (labels inside)."""
    return model(**batch).loss


def next_token_step(model: nn.Module, batch: dict) -> Tensor:
    """Causal-LM cross-entropy for a model that maps (batch, seq) tokens to (batch, seq, vocab) logits."""
    ids = batch["input_ids"]
    logits = model(ids[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def logits_step(model: nn.Module, batch: dict) -> Tensor:
    """Cross-entropy for a classifier that maps input_ids to (batch, classes) logits."""
    return F.cross_entropy(model(batch["input_ids"]), batch["labels"])


def adamw(lr: float, weight_decay: float = 0.01) -> Callable[[Iterable], torch.optim.Optimizer]:
    """The usual optimizer: AdamW at learning rate `lr` (no schedule)."""
    return lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
