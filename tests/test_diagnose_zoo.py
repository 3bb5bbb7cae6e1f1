"""The structure-aware diagnosis on a fast subset of the zoo (the whole zoo is benchmarks/zoo.py).

Real architectures from `transformers` at their default init (tests/zoo.py): healthy ones get no
finding worse than info at init and after a few steps of their own AdamW recipe, the blocks
found are the zoo's depth axis, hooks are all removed, and EfficientNet's library init (BatchNorm
weights ~ N(0, 0.02): the forward signal dies) is found vanishing along its blocks.
"""
from __future__ import annotations

import re

import pytest

zoo = pytest.importorskip("zoo")  # tests/zoo.py needs transformers (the dev extra)

from graddoctor.probe.structure import find_blocks  # noqa: E402
from graddoctor.remedies import candidates  # noqa: E402

# one per family kind: LayerScale conv net, BN ResNet, BN chain, pre-LN decoder, post-LN encoder,
# windowed attention, encoder-decoder, LSTM (calibration and held-out families alike: this is a
# regression test of verdicts already measured, not a calibration)
AT_INIT = ("convnext", "resnet-bottleneck", "mobilenet-v1", "gpt2", "bert", "swin", "t5", "lstm-lm")
TRAINED = ("convnext", "gpt2")


@pytest.mark.parametrize("name", AT_INIT)
def test_healthy_zoo_models_at_init(name):
    m = zoo.get(name)
    v = zoo.judge(m, steps=1)  # init: one forward/backward; one training step (unjudged here)
    assert v.error is None and v.hooks_clean
    assert v.init.healthy, str(v.init)
    blocks = find_blocks(m.make(0))
    assert all(re.fullmatch(m.blocks, b) for b in blocks), (blocks[:3], m.blocks)


@pytest.mark.parametrize("name", TRAINED)
def test_healthy_zoo_models_while_training(name):
    v = zoo.judge(zoo.get(name), steps=6)
    assert v.error is None and v.hooks_clean
    assert v.trained.healthy, str(v.trained)


def test_efficientnet_library_init_vanishes_along_its_blocks():
    m = zoo.get("efficientnet")
    assert m.expected == "vanishing"
    v = zoo.judge(m, steps=1)  # init: one forward/backward; one training step (unjudged here)
    (f,) = [f for f in v.init.findings if f.kind == "vanishing" and "first_block" in f.evidence]
    assert f.severity == "critical" and f.evidence["decades"] < -10
    assert all(x.startswith("efficientnet.encoder.blocks") for x in f.layers)


def test_an_explosion_inside_branches_that_appears_while_training_blames_the_learning_rate_first():
    """GPT-2 at 100x its recipe's lr: healthy at init, LayerNorm inputs inside the branches blow up while
    training; as along the depth axis, a symptom with an onset during training ranks the lr first."""
    p = next(p for p in zoo.PLANTED if p.name == "gpt2-lr100")
    v = zoo.judge(p.model, steps=50)
    assert v.error is None and v.init.healthy, str(v.init)
    (f,) = [f for f in v.trained.findings if f.kind == "exploding"]
    assert "worst_layer" in f.evidence  # judged inside the branches, not along the stream
    top = f.causes[0]
    assert top.name == "learning_rate_too_high" and top.evidence["onset"] is True, str(v.trained)
    assert "init_too_large" in [c.name for c in f.causes[1:]]  # the weights' part stays, ranked second
    # its steps are ~100x the typical update/weight: the advice and treat's first try cut the lr 100x
    assert f.remedies[0] == "tune_optimizer(lr/100)" and top.evidence["update_ratio_p90"] > 10 ** 1.5 * 1e-3
    assert candidates.ranked_labels(v.trained, v.init)[0] == "tune_optimizer(lr/100)"
