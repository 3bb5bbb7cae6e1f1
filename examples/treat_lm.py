"""graddoctor.treat on a transformer language model, in your own training step.

A GPT-2-style causal LM (Hugging Face `transformers`, built from a small config: nothing is
downloaded) with a planted fault: every weight matrix initialised 100x too small (a units bug
in a custom init). `treat` diagnoses it,
tries the remedies the diagnosis points to with *your* train_step and optimizer on the same
batches, and returns the winner's changes; they are saved, and re-applied to a fresh
GPT2LMHeadModel, which then computes exactly what the treated model computes.

    python examples/treat_lm.py                  # prints the report; writes docs/results/treat_lm.md
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import sys
import tempfile
from pathlib import Path

import torch
import transformers

import graddoctor as gd

VOCAB, SEQ, BATCH = 128, 16, 8
CONFIG = transformers.GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=64, n_layer=12, n_head=4,
                                 bos_token_id=0, eos_token_id=0, pad_token_id=0)


def make_model() -> transformers.GPT2LMHeadModel:
    """The user's model: GPT-2 small's depth (12 blocks), narrow."""
    return transformers.GPT2LMHeadModel(CONFIG)


def plant(model: torch.nn.Module) -> torch.nn.Module:
    """The planted fault: every weight matrix (and embedding) 100x smaller than the library's init."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(0.01)
    return model


def batches(n: int = 4, seed: int = 0) -> list[dict]:
    """Token sequences from a fixed random low-entropy Markov chain (so the loss can fall)."""
    g = torch.Generator().manual_seed(seed)
    trans = torch.softmax(4 * torch.randn(VOCAB, VOCAB, generator=g), 1)
    out = []
    for _ in range(n):
        tok = [torch.randint(0, VOCAB, (BATCH,), generator=g)]
        for _ in range(SEQ - 1):
            tok.append(torch.multinomial(trans[tok[-1]], 1, generator=g).squeeze(1))
        ids = torch.stack(tok, 1)
        out.append({"input_ids": ids, "labels": ids})
    return out


def train_step(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """Your forward and loss: the model's own causal-LM loss (it shifts the labels itself)."""
    return model(**batch).loss


def make_optimizer(params):
    """Your optimizer: AdamW as usual for a small transformer."""
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)


def main(budget_steps: int = 40, out: str | None = None) -> str:
    torch.manual_seed(0)
    data = batches()
    result = gd.treat(plant(make_model()), data, train_step=train_step, make_optimizer=make_optimizer,
                      budget_steps=budget_steps, max_steps=5 * budget_steps, seed=0, progress_bar=False)
    lines = [str(result), ""]
    best = result.best
    if best is not None:
        with tempfile.TemporaryDirectory() as d:
            result.save(d)  # changes.json + state_dict.pt
            lines.append(f"saved: {', '.join(sorted(p.name for p in Path(d).iterdir()))}")
            fresh = gd.load_treated(make_model(), d)  # a fresh instance of your class, made the winner
        best.model.eval()
        fresh.eval()
        with torch.no_grad():
            same = torch.equal(best.model(data[0]["input_ids"]).logits, fresh(data[0]["input_ids"]).logits)
        lines.append(f"reloaded into a fresh GPT2LMHeadModel: outputs bit-identical to the treated model: {same}")
    text = "\n".join(lines)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text("```text\n" + text + "\n```\n")
    return text


if __name__ == "__main__":
    torch.set_num_threads(1)
    root = Path(__file__).resolve().parents[1]
    print(main(out=str(root / "docs" / "results" / "treat_lm.md")))
    sys.exit(0)
