"""Structure-aware diagnosis on real architectures: what the structure is, and by-design patterns as info.

Hugging Face models are built from small configs at their library's default init (nothing
downloaded); each test runs one forward/backward (a second or less each).
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from torch import nn

import graddoctor as gd
from graddoctor.diagnose.structure import analyse, stack_key
from graddoctor.probe.structure import find_blocks

T = pytest.importorskip("transformers") if os.environ.get("CI") != "true" else __import__("transformers")
T.logging.set_verbosity_error()
VOCAB, SEQ = 64, 12


def _tokens(seed: int = 0, batch: int = 4) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch, SEQ), generator=torch.Generator().manual_seed(seed))


def gpt2(layers: int = 3):
    torch.manual_seed(0)
    return T.GPT2LMHeadModel(T.GPT2Config(n_layer=layers, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=SEQ))


def bert(layers: int = 3):
    torch.manual_seed(0)
    return T.BertForMaskedLM(T.BertConfig(num_hidden_layers=layers, hidden_size=32, num_attention_heads=4,
                                          intermediate_size=64, vocab_size=VOCAB, max_position_embeddings=SEQ))


def convnext():
    torch.manual_seed(0)
    return T.ConvNextForImageClassification(T.ConvNextConfig(hidden_sizes=[8, 16], depths=[2, 2], num_labels=4,
                                                             num_stages=2, image_size=32))


def resnet():
    torch.manual_seed(0)
    return T.ResNetForImageClassification(T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[2, 2],
                                                         layer_type="basic", num_labels=4))


def lm_step(model, tokens):
    return model(input_ids=tokens, labels=tokens).loss


def image_step(model, x):
    return model(pixel_values=x, labels=torch.arange(len(x)) % 4).loss


def watched(model, step, batch, steps: int = 1, optimizer=None, **kw):
    """(trace, diagnosis) of `steps` steps of `model` on `batch` under watch()."""
    with gd.watch(model, optimizer=optimizer, **kw) as probe:
        for _ in range(steps):
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
            loss = step(model, batch)
            loss.backward()
            if optimizer is not None:
                optimizer.step()
            probe.step(loss)
    return probe.trace, gd.diagnose(probe.trace)


def _hooks(model):
    return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]


def by_design(d, pattern):
    return [f for f in d.findings if f.kind == "by_design" and f.evidence.get("pattern") == pattern]


# -- structure discovery ----------------------------------------------------------------------
def test_gpt2_blocks_on_a_residual_stream_with_attention_and_mlp_branches():
    model = gpt2()
    before = _hooks(model)
    trace, d = watched(model, lm_step, _tokens())
    assert _hooks(model) == before  # the structure recorder's hooks are gone too
    assert find_blocks(model) == [f"transformer.h.{i}" for i in range(3)]
    s = analyse(trace)
    assert s.axis == "residual stream" and all(b.residual and not b.shortcut for b in s.blocks)
    labels = [(br.label, [s.names[i].rsplit(".", 1)[-1] for i in br.layers if s.is_weight(i)])
              for br in s.blocks[1].branches]
    assert labels == [("attention", ["c_attn", "c_proj"]), ("MLP", ["c_fc", "c_proj"])]
    assert s.tied == [["transformer.wte", "lm_head"]]
    assert "transformer.wpe" in {s.names[i] for i in s.other_lead}  # position embedding: (1, T, d), shared by the batch
    summary = d.context["structure"]["summary"]
    assert summary.startswith("3 blocks on a residual stream; inside each: attention (c_attn, c_proj), "
                              "MLP (c_fc, c_proj)")
    assert "tied weights: 'transformer.wte' = 'lm_head'" in summary
    assert str(d).splitlines()[1] == f"structure: {summary}"  # printed under the verdict
    assert d.healthy, str(d)


def test_resnet_stages_of_blocks_with_projection_shortcuts():
    model = resnet()
    trace, d = watched(model, image_step, torch.randn(4, 3, 32, 32))
    s = analyse(trace)
    assert [b.name for b in s.blocks] == [f"resnet.encoder.stages.{i}.layers.{j}" for i in range(2) for j in range(2)]
    assert len(s.stacks) == 1 and len({b.stage for b in s.blocks}) == 2
    first_of_stage_1 = s.blocks[2]
    assert first_of_stage_1.residual
    assert [s.names[i] for i in first_of_stage_1.shortcut] == [f"resnet.encoder.stages.1.layers.0.shortcut.{n}"
                                                               for n in ("convolution", "normalization")]
    assert not s.blocks[1].shortcut  # an identity shortcut has no layer on it
    assert "4 blocks in 2 stages on a residual stream, 1 with a projection shortcut" in s.summary
    assert d.healthy, str(d)


class DenseBlockNet(nn.Module):
    """DenseNet-like: each layer reads the concatenation of every feature map before it."""

    def __init__(self, growth: int = 4, layers: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.convs = nn.ModuleList(nn.Conv2d(8 + i * growth, growth, 3, padding=1) for i in range(layers))
        self.head = nn.Linear(8 + layers * growth, 4)

    def forward(self, x):
        feats = [torch.relu(self.stem(x))]
        for conv in self.convs:
            feats.append(torch.relu(conv(torch.cat(feats, 1))))
        return self.head(torch.cat(feats, 1).mean((2, 3)))


def test_densenet_concatenations_are_recorded():
    model = DenseBlockNet()
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,))
    trace, _ = watched(model, lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]), (x, y))
    s = analyse(trace)
    assert {s.names[i] for i in s.concat_fed} == {"convs.0", "convs.1", "convs.2", "head"}
    inputs = trace.structure["layers"]["convs.2"]["inputs"]
    assert set(inputs) == {"stem", "convs.0", "convs.1"} and all("concat" in f for f in inputs.values())
    assert s.summary.endswith(f"; {len(s.concat_fed)} layers read concatenations")  # the count, not the template


def test_stack_keys_and_blocks_of_an_encoder_decoder():
    assert stack_key("resnet.encoder.stages.2.layers.1") == "resnet.encoder.stages.*.layers.*"
    torch.manual_seed(0)
    t5 = T.T5ForConditionalGeneration(T.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                                 num_heads=4, decoder_start_token_id=0, pad_token_id=0))
    trace, d = watched(t5, lambda m, b: m(input_ids=b, labels=b).loss, _tokens())
    s = analyse(trace)
    assert list(s.stacks) == ["encoder.block.*", "decoder.block.*"]
    assert d.healthy, str(d)


# -- by-design patterns are info, with their evidence ----------------------------------------------
def test_bert_qk_at_init_is_the_near_uniform_attention_pattern():
    trace, d = watched(bert(), lm_step, _tokens())
    assert d.healthy, str(d)
    (f,) = by_design(d, "attention_qk")
    assert f.severity == "info" and f.evidence["attention_layers"] == 3
    assert f.evidence["qk_below_v_decades"] < -1.0  # Q/K signals are < 1/10 of V's
    assert f.evidence["score_rms_estimate"] < 0.3  # the scores are near 0: near-uniform softmax
    s = analyse(trace)
    assert {s.names[i].rsplit(".", 1)[-1] for i in s.score_side} == {"query", "key"}
    # the table shows what the verdict compared: Q/K against V (their median is the pattern's number)
    rows = [r for r in d.context["table"] if r["name"].endswith((".query", ".key"))]
    assert all(r["compared_with"] == r["name"].rsplit(".", 1)[0] + ".value" for r in rows)
    assert np.median([r["judged_decades"] for r in rows]) == pytest.approx(f.evidence["qk_below_v_decades"], abs=0.05)


def test_convnext_layerscale_is_info_with_its_scale():
    _, d = watched(convnext(), image_step, torch.randn(4, 3, 32, 32))
    assert d.healthy, str(d)
    (f,) = by_design(d, "branch_scale")
    assert f.evidence["exit_decades"] == pytest.approx(-6.0, abs=0.1)  # layer_scale_init_value 1e-6
    assert f.evidence["scale_rms"] == pytest.approx(1e-6, rel=0.01)
    assert len(f.evidence["blocks"]) == 4
    # the table shows what the verdict compared: each branch's exit against its block's output (the
    # LayerScale), the layers inside the branch against the exit, the blocks against the last one
    rows = {r["name"]: r for r in d.context["table"]}
    for b in f.evidence["blocks"]:
        assert rows[f"{b}.pwconv2"]["compared_with"] == b
        assert rows[f"{b}.pwconv2"]["judged_decades"] == pytest.approx(-6.0, abs=0.1)
        assert rows[f"{b}.pwconv1"]["compared_with"] == f"{b}.pwconv2"
        assert -4 < rows[f"{b}.pwconv1"]["judged_decades"] < 0  # far less than the -7 of the chain view
        assert rows[f"{b}.pwconv1"]["signal_decades"] < -5
    assert rows["classifier"]["judged_decades"] is None  # outside the blocks: not compared layer by layer
    levels = {b["name"]: b["signal_decades"] for b in d.context["structure"]["blocks"]}
    assert levels["convnext.encoder.stages.1.layers.1"] == 0.0 and levels["convnext.encoder.stages.0.layers.0"] > -1.5


class ZeroHead(nn.Module):
    """An MLP whose classification head starts at zero (a ViT/timm convention) and a LoRA-style B = 0."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.lora_a, self.lora_b = nn.Linear(32, 4, bias=False), nn.Linear(4, 32, bias=False)
        self.head = nn.Linear(32, 5)
        nn.init.zeros_(self.lora_b.weight)
        nn.init.zeros_(self.head.weight)

    def forward(self, x):
        h = self.body(x)
        return self.head(h + self.lora_b(self.lora_a(h)))


def test_zero_initialised_layers_are_info_at_step_0_and_gradients_flow_once_they_move():
    model = ZeroHead()
    x, y = torch.randn(32, 16), torch.randint(0, 5, (32,))
    step = lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1])
    _, d0 = watched(model, step, (x, y))
    assert d0.healthy, str(d0)
    (f,) = by_design(d0, "zero_init")
    assert set(f.evidence["layers"]) == {"lora_b", "head"} and f.evidence["layers_with_zero_signal"] >= 3
    trace, d = watched(model, step, (x, y), steps=4, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-2))
    assert d.healthy, str(d)
    # the zeros clear as the layers above them move: the head after step 0, LoRA's B after step 1
    assert (trace["delta_rms"][0] == 0).sum() >= 3 and np.all(trace["delta_rms"][2:] > 0)


def test_normalisation_growth_of_a_plain_batchnorm_chain_is_info():
    torch.manual_seed(0)
    model = T.MobileNetV1ForImageClassification(T.MobileNetV1Config(image_size=32, depth_multiplier=0.25, min_depth=8,
                                                                    num_labels=4))
    _, d = watched(model, image_step, torch.randn(8, 3, 32, 32))
    assert d.healthy, str(d)
    (f,) = by_design(d, "norm_growth")
    assert 1.0 < f.evidence["decades"] < 4.0  # real growth towards the input, within what trains
    assert "dead_units" not in {x.kind for x in d.findings}  # zero padding of its convolutions is not dead units


def test_structure_waits_for_a_training_forward_and_survives_a_save():
    model = gpt2(2)
    with gd.watch(model) as probe:
        with torch.no_grad():  # an evaluation pass first: nothing to learn the structure from
            model(input_ids=_tokens())
        loss = lm_step(model, _tokens())
        loss.backward()
        probe.step(loss)
    assert probe.trace.structure is not None and len(probe.trace.structure["blocks"]) == 2


def test_structure_is_saved_with_the_trace(tmp_path):
    trace, d = watched(gpt2(2), lm_step, _tokens())
    again = gd.Trace.load(trace.save(tmp_path / "t.npz"))
    assert again.structure == trace.structure
    assert gd.diagnose(again).context["structure"] == d.context["structure"]


class PositionChain(nn.Module):
    """Token + position embeddings into a chain of Linear layers (no blocks); the position
    embedding's output is (1, T, d): shared by the whole batch (and scaled up 100x, so that its
    error signal is 100x larger on top of summing the batch's)."""

    def __init__(self, vocab=VOCAB, seq=SEQ, dim=16) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(seq, dim)
        self.fc1, self.fc2, self.out = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, vocab)

    def forward(self, ids):
        h = self.tok(ids) + 100 * self.pos(torch.arange(ids.shape[1])[None])
        return self.out(torch.relu(self.fc2(torch.relu(self.fc1(h)))))


def test_an_output_shared_by_the_batch_is_not_compared_along_the_chain():
    ids = _tokens(batch=64)
    step = lambda m, b: nn.functional.cross_entropy(m(b).flatten(0, 1), b.flatten())
    _, d = watched(PositionChain(), step, ids)
    assert d.healthy, str(d)
    (f,) = by_design(d, "not_comparable")
    assert f.layers == ("pos",) and f.evidence["signal_decades"]["pos"] > 2  # left out: no exploding verdict
    (row,) = [r for r in d.context["table"] if r["name"] == "pos"]
    assert row["judged_decades"] is None and row["compared_with"] is None
