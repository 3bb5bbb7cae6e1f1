"""The structure-aware verdict on two real architectures, as the terminal prints it (for docs/verdicts.md).

A ConvNeXt-like image classifier (LayerScale 1e-6) and a BERT-like masked LM (near-uniform
attention at init), both from `transformers` small configs at the library's default init, one
forward/backward under `graddoctor.watch`. For each, the verdict as printed by the terminal
report, and — to show what the structure changes — the verdict on the same numbers judged as a
chain of layers (the trace without its recorded structure).

    python benchmarks/verdict_examples.py

Writes docs/results/verdict-convnext.md, verdict-bert.md (and the chain-of-layers versions,
verdict-convnext-chain.md, verdict-bert-chain.md).
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import torch
import transformers as T

import graddoctor as gd
from graddoctor.probe.trace import Trace
from graddoctor.report.terminal import render_text

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
WIDTH = 110
T.logging.set_verbosity_error()


def convnext() -> tuple[torch.nn.Module, dict]:
    """ConvNeXt with two stages of two blocks (LayerScale init 1e-6, the library default)."""
    torch.manual_seed(0)
    model = T.ConvNextForImageClassification(T.ConvNextConfig(hidden_sizes=[16, 32], depths=[2, 2], num_stages=2,
                                                              num_labels=10, image_size=32))
    g = torch.Generator().manual_seed(0)
    return model, {"pixel_values": torch.randn(16, 3, 32, 32, generator=g),
                   "labels": torch.randint(0, 10, (16,), generator=g)}


def bert() -> tuple[torch.nn.Module, dict]:
    """A 4-block BERT masked LM (post-LN, the library's N(0, 0.02) init)."""
    torch.manual_seed(0)
    model = T.BertForMaskedLM(T.BertConfig(num_hidden_layers=4, hidden_size=32, num_attention_heads=4,
                                           intermediate_size=64, vocab_size=128, max_position_embeddings=16))
    ids = torch.randint(3, 128, (8, 16), generator=torch.Generator().manual_seed(0))
    return model, {"input_ids": ids, "labels": ids}


def as_chain(trace: Trace) -> Trace:
    """The same numbers without the recorded structure: judged as a chain of layers."""
    out = trace.select(slice(None))
    out.meta = {k: v for k, v in trace.meta.items() if k not in ("structure", "blocks")}
    out.series = type(trace.series)()
    return out


def example(make) -> tuple[str, str]:
    """(structure-aware verdict, chain-of-layers verdict) as the terminal prints them."""
    model, batch = make()
    with gd.watch(model) as probe:
        loss = model(**batch).loss
        loss.backward()
        probe.step(loss)
    return (render_text(gd.diagnose(probe.trace), WIDTH), render_text(gd.diagnose(as_chain(probe.trace)), WIDTH))


def main() -> None:
    torch.set_num_threads(1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name, make in (("convnext", convnext), ("bert", bert)):
        aware, chain = example(make)
        for suffix, text in (("", aware), ("-chain", chain)):
            path = RESULTS / f"verdict-{name}{suffix}.md"
            path.write_text("```text\n" + text.rstrip() + "\n```\n")
            print(f"== {path.name}\n{text}")


if __name__ == "__main__":
    main()
