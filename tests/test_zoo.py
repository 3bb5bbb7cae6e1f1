"""The zoo itself: every model builds, trains under watch() and leaves nothing behind; the split
is by family and mixes vision and text; planted ground truths hold by the autograd oracle.

The diagnosis' accuracy on the zoo is NOT asserted here (benchmarks/zoo.py measures it).
"""
from __future__ import annotations

import functools
import math
import re

import pytest
import torch
import zoo
import zoo_base
import zoo_oracle
import zoo_planted

import graddoctor as gd

VISION = {"image-classification"}


@pytest.mark.parametrize("m", zoo.ZOO, ids=lambda m: m.name)
def test_every_model_trains_two_steps_under_watch_and_leaves_no_hook(m):
    v = zoo.judge(m, seed=0, steps=2)
    assert v.error is None, v.error
    assert v.hooks_clean
    assert v.init is not None and v.trained is not None
    assert len(v.losses) == 2 and all(math.isfinite(x) for x in v.losses)
    blocks = zoo_oracle.block_modules(m.make(0), m.blocks)
    assert blocks, f"{m.name}: its blocks pattern {m.blocks!r} matches no module"


def test_hooks_of_sees_a_hook_left_behind():
    m = zoo.get("lstm-lm")
    model = m.make(0)
    before = zoo.hooks_of(model)
    h = model.decoder.register_forward_hook(lambda *a: None)
    assert zoo.hooks_of(model) != before
    h.remove()
    assert zoo.hooks_of(model) == before
    opt = m.make_optimizer(model.parameters())
    with_opt = zoo.hooks_of(model, opt)
    with gd.watch(model, optimizer=opt):
        assert zoo.hooks_of(model, opt) != with_opt  # the probe's optimizer hooks are seen
    assert zoo.hooks_of(model, opt) == with_opt


def test_split_is_by_family_and_each_half_mixes_vision_and_text():
    assert len(zoo.ZOO) >= 30
    assert len({m.name for m in zoo.ZOO}) == len(zoo.ZOO)
    for m in zoo.ZOO:
        assert m.half == zoo.half_of(m.family) and m.half in zoo.HALVES
    for p in zoo.PLANTED:
        assert p.model.half == zoo.get(p.base).half and p.model.family == zoo.get(p.base).family
    for half in zoo.HALVES:
        tasks = {m.task for m in zoo.ZOO if m.half == half}
        assert tasks & VISION and tasks - VISION, half
    # the fixed table: alternate halves over the sorted family names of the first commit
    names = sorted(zoo.FAMILIES)
    assert [zoo.FAMILIES[f] for f in names] == [zoo.HALVES[i % 2] for i in range(len(names))]


@pytest.mark.parametrize("task", sorted(zoo_base.BATCHES))
def test_batches_are_fixed_per_seed_and_labels_are_not_constant(task):
    make = zoo_base.BATCHES[task]
    a, b, c = make(0, 2), make(0, 2), make(1, 2)
    for x, y in zip(a, b):
        assert all(torch.equal(x[k], y[k]) for k in x)
    assert not torch.equal(a[0]["labels"], c[0]["labels"])
    labels = a[0]["labels"]
    assert labels[labels >= 0].unique().numel() > 1


def test_every_planted_case_names_known_kinds_and_blocks_that_exist():
    from graddoctor.diagnose.findings import CAUSES, KINDS

    new_causes = {"non_finite_input", "non_finite_forward", "precision_underflow"}
    assert len(zoo.PLANTED) >= 10 and {p.model.half for p in zoo.PLANTED} == set(zoo.HALVES)
    for p in zoo.PLANTED:
        assert p.kinds and p.kinds <= set(KINDS), p.name
        assert p.causes and set(p.causes) <= set(CAUSES) | new_causes, p.name
        assert p.when in ("init", "trained", "both")
        names = [n for n, _ in p.model.make(0).named_modules()]
        for b in p.blocks:
            assert any(n == b or n.startswith(b + ".") for n in names), (p.name, b)


HARM_LINE = re.compile(r"harm (True|False), harmless (True|False) \(final loss (\S+) vs healthy (\S+), "
                       r"healthy drop (\S+)\)")


def test_recorded_evidence_agrees_with_every_claim():
    """tests/zoo_evidence.json (benchmarks/zoo.py --oracle --write) measured each planting's declared category,
    and the numbers it recorded give that category by zoo_oracle's rules."""
    assert {p.name for p in zoo_planted.ALL} <= set(zoo_planted.EVIDENCE)
    for p in zoo_planted.ALL:
        measured = zoo_planted.EVIDENCE[p.name]
        text = measured["text"]
        assert measured["category"] == p.extra["category"], (p.name, text)
        assert measured["seeds"] >= (3 if p.extra["category"] != "unscored" else 1)
        assert re.findall(r"median of (\d+) seeds", text) == [str(measured["seeds"])], (p.name, text)
        harm, harmless, final, healthy, drop = HARM_LINE.search(text).groups()
        assert (harmless == "True") == (measured["category"] == "harmless"), (p.name, text)
        if p.extra["truth"] == "cost" and measured["category"] == "planted":  # a training fault's truth is its cost
            assert harm == "True", (p.name, text)
        margin = float(final) - float(healthy) - zoo_oracle.HARMLESS * float(drop)
        if math.isfinite(margin) and abs(margin) > 0.02:  # the printed numbers are rounded to 0.01
            assert (harmless == "True") == (margin <= 0), (p.name, text)


@functools.cache
def _trained(name: str, steps: int = 50):
    return zoo_oracle.train(zoo.get(name), 0, steps)


GRADIENT = [p for p in zoo_planted.PLANTED if p.extra["truth"] == "gradient"]
COST = [p for p in zoo_planted.PLANTED if p.extra["truth"] == "cost"]


@pytest.mark.parametrize("p", [p for p in GRADIENT if p.when in ("init", "both")], ids=lambda p: p.name)
def test_planted_gradient_fault_at_init_holds_by_the_oracle(p):
    """The cheap part of the oracle: one seed, the gradient profile at init against the healthy base."""
    ph = zoo_oracle.profile_phase(p, zoo.get(p.base))
    assert zoo_oracle.phase_holds(ph, p.kinds, p.causes), ph.text()


@pytest.mark.parametrize("p", [p for p in GRADIENT if p.when == "trained"], ids=lambda p: p.name)
def test_planted_gradient_fault_after_training_holds_by_the_oracle(p):
    """One seed: the gradient profile after 50 steps against the healthy base's after 50 steps."""
    model, _ = _trained(p.name)
    base_model, _ = _trained(p.base)
    ph = zoo_oracle._phase([zoo_oracle.block_profile(p.model, 0, model)],
                           [zoo_oracle.block_profile(zoo.get(p.base), 0, base_model)])
    assert zoo_oracle.phase_holds(ph, p.kinds, p.causes), ph.text()


@pytest.mark.parametrize("p", COST, ids=lambda p: p.name)
def test_planted_training_fault_costs_training_by_the_oracle(p):
    """One seed: the loss goes non-finite, or ends HARM x the healthy drop above the healthy loss."""
    if p.kinds == {"non_finite"}:  # 16-bit parameters: the first update already writes NaN
        assert not all(map(math.isfinite, zoo_oracle.losses(p.model, 0, 3)))
        u = zoo_oracle.optimizer_underflow(p.model)
        assert u["eps_is_zero"] and u["second_moment_zero"] > 0.5 and u["nonfinite_params"] > 0
        return
    got, base = _trained(p.name)[1], _trained(p.base)[1]
    assert zoo_oracle.final(got) - zoo_oracle.final(base) >= zoo_oracle.HARM * zoo_oracle.drop(base)


def test_oracle_profile_matches_a_direct_autograd_computation():
    """block_profile's output-gradient RMS equals dL/d(block output) computed by hand on a small model."""
    m = zoo.get("torch-transformer")
    prof = zoo_oracle.block_profile(m, 0)
    model = m.make(0)
    batch = m.batches(0, zoo.N_BATCHES)[0]
    outs = []
    hooks = [mod.register_forward_hook(lambda _m, _a, o: outs.append(o))
             for n, mod in model.named_modules() if re.fullmatch(m.blocks, n)]
    torch.manual_seed(0)
    loss = m.train_step(model, batch)
    for h in hooks:
        h.remove()
    grads = torch.autograd.grad(loss, outs)
    want = [float(g.pow(2).mean().sqrt()) for g in grads]
    assert prof.out_rms == pytest.approx(want, rel=1e-5)


def _bench():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "zoo.py"
    spec = importlib.util.spec_from_file_location("bench_zoo", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _finding(kind, layers, causes, severity="critical"):
    return {"kind": kind, "severity": severity, "layers": layers, "causes": causes}


def test_benchmark_scores_detection_cause_and_localisation():
    bench = _bench()
    p = next(p for p in zoo.PLANTED if p.name == "gpt2-x0.01")
    inside = bench.layer_groups(["transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_fc", "lm_head"])
    hit = {"healthy": False, "findings": [_finding("vanishing", inside, ["chain_product_depth", "init_too_small"])]}
    assert bench.score_planted(p, hit) == {"detected": True, "cause": True, "localised": True}
    outside = bench.layer_groups(["lm_head", "transformer.wte", "transformer.h.0.mlp"])
    third = {"healthy": False, "findings": [_finding("vanishing", outside, ["a", "b", "init_too_small"])]}
    assert bench.score_planted(p, third) == {"detected": True, "cause": False, "localised": False}
    wrong_kind = {"healthy": False, "findings": [_finding("exploding", inside, ["init_too_small"])]}
    assert bench.score_planted(p, wrong_kind)["detected"] is False
    nan = next(p for p in zoo.PLANTED if p.name == "bert-x10")  # exploding: a non_finite finding counts
    assert bench.score_planted(nan, {"healthy": False, "findings": [_finding("non_finite", {}, ["x"])]})["detected"]
    rows = [{"half": "calibration", "kind": "zoo", "expected": "healthy", "init": {"healthy": True},
             "trained": hit, "error": None, "hooks_clean": True},
            {"half": "calibration", "kind": "planted", "scores": {"init": bench.score_planted(p, hit)},
             "error": "RuntimeError: x", "hooks_clean": False, "expected": "vanishing"}]
    s = bench.summarise(rows)["calibration"]
    assert s["false_alarms_init"] == [0, 1] and s["false_alarms_trained"] == [1, 1]
    assert s["detection"] == [1, 1] and s["exceptions"] == [1, 2] and s["hooks_left"] == [1, 2]


def test_benchmark_runs_one_model_and_writes_its_json(tmp_path, monkeypatch):
    import json
    import sys

    bench = _bench()
    out = tmp_path / "zoo.json"
    argv = ["zoo.py", "--only", "lstm-lm", "--steps", "2", "--seeds", "1", "--json", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    bench.main()
    data = json.loads(out.read_text())
    (row,) = data["rows"]
    assert row["name"] == "lstm-lm" and row["error"] is None and row["hooks_clean"]
    assert set(data["summary"]) == set(zoo.HALVES)


def test_benchmark_merges_runs_of_distinct_seeds_and_lists_flipped_verdicts(tmp_path):
    import argparse
    import json

    bench = _bench()
    assert bench.seed_list("3") == [0, 1, 2] and bench.seed_list("1,2") == [1, 2] and bench.seed_list("2,") == [2]
    for bad in ("", "a", "1,1", "-1,2"):
        with pytest.raises(argparse.ArgumentTypeError):
            bench.seed_list(bad)
    assert bench.seed_range([0, 1, 2]) == "0..2" and bench.seed_range([0, 2]) == "0, 2" and bench.seed_range([2]) == "2"
    vanish = {"healthy": False, "findings": [_finding("vanishing", {}, [])]}
    row = lambda seed, init: {"name": "gpt2", "seed": seed, "init": init, "trained": {"healthy": True}}
    config = {"steps": 50, "every": 1}
    paths = []
    for seeds in ((0,), (1, 2)):
        paths.append(tmp_path / f"run{len(paths)}.json")
        rows = [row(k, vanish if k == 2 else {"healthy": True}) for k in seeds]
        paths[-1].write_text(json.dumps({"config": config, "rows": rows}))
    rows, _ = bench.merged(",".join(map(str, paths)))
    assert sorted(r["seed"] for r in rows) == [0, 1, 2]
    assert bench.flips(rows) == ["gpt2 (init): healthy (seed 0, 1); vanishing (seed 2)"]
    with pytest.raises(SystemExit, match="twice on seed 1"):  # the same seed in two runs is not merged
        bench.merged(f"{paths[1]},{paths[1]}")
    again = tmp_path / "again.json"  # ... unless a later run judged it again (--rejudged): the later row wins
    again.write_text(json.dumps({"config": config, "rows": [row(2, {"healthy": True})]}))
    rows, _ = bench.merged(f"{paths[1]},{again}", later_wins=True)
    assert [(r["seed"], r["init"]["healthy"]) for r in rows] == [(1, True), (2, True)]
