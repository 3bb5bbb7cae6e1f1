"""`graddoctor check`: the terminal report, --json, and one-line errors for bad input."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from graddoctor.cli import main
from graddoctor.cli.check import check_setup
from graddoctor.cli.factory import UserSetup, load_setup, setup_from

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "models.py"


def verdicts(out: str) -> list[str]:
    """The verdict panels' titles: 'HEALTHY', 'VANISHING', 'EXPLODING, SATURATION', ..."""
    return re.findall(r"verdict: ([A-Z_, ]+?) ─", out)


def test_check_reports_vanishing_with_table(capsys):
    assert main(["check", f"{EXAMPLES}:deep_sigmoid", "--input-shape", "64"]) == 0
    out = capsys.readouterr().out
    assert verdicts(out) == ["VANISHING"] and "saturating_activation" in out
    assert "swap_activation" in out


def test_check_json_schema(capsys):
    assert main(["check", f"{EXAMPLES}:digits_mlp", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["healthy"] is False
    f = d["findings"][0]
    assert f["kind"] == "vanishing" and f["causes"][0]["name"] == "init_too_small"
    assert set(f) >= {"kind", "severity", "layers", "summary", "evidence", "causes", "remedies"}
    assert [row["name"] for row in d["context"]["table"]][:2] == ["0", "2"]


def test_check_healthy_and_strict(capsys):
    assert main(["check", f"{EXAMPLES}:healthy_relu", "--input-shape", "64", "--strict"]) == 0
    assert verdicts(capsys.readouterr().out) == ["HEALTHY"]  # not "UNHEALTHY", not a finding's title
    assert main(["check", f"{EXAMPLES}:exploding_relu", "--input-shape", "64", "--strict"]) == 1
    assert verdicts(capsys.readouterr().out) == ["EXPLODING"]


@pytest.mark.parametrize("args, message", [
    (["check", "nope.py:f", "--input-shape", "4"], "no such file"),
    (["check", f"{EXAMPLES}:missing", "--input-shape", "4"], "has no factory 'missing'"),
    (["check", f"{EXAMPLES}", "--input-shape", "4"], "expected FILE.py:FACTORY"),
    (["check", f"{EXAMPLES}:deep_sigmoid", "--input-shape", "3x32x32"], "failed on inputs of shape"),
    (["check", f"{EXAMPLES}:deep_sigmoid", "--input-shape", "axb"], "--input-shape must look like"),
    (["check", f"{EXAMPLES}:deep_sigmoid"], "give --input-shape"),
], ids=["no-file", "no-factory", "no-colon", "shape-mismatch", "bad-shape", "no-data"])
def test_bad_input_is_one_line_exit_2(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("graddoctor: error:") and message in err and "\n" not in err


def test_factory_that_raises(tmp_path, capsys):
    f = tmp_path / "bad.py"
    f.write_text("def make():\n    raise RuntimeError('boom')\n")
    assert main(["check", f"{f}:make", "--input-shape", "4"]) == 2
    assert "raised RuntimeError: boom" in capsys.readouterr().err


def test_check_runs_as_a_real_command():
    r = subprocess.run([sys.executable, "-m", "graddoctor.cli", "check", f"{EXAMPLES}:healthy_relu",
                        "--input-shape", "64", "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["healthy"] is True


# -- the user's own data, step and optimizer -----------------------------------------------------

def test_check_trains_with_the_users_loader_step_and_optimizer():
    setup = load_setup(f"{EXAMPLES}:digits_training")
    assert isinstance(setup, UserSetup) and setup.user_step and setup.make_optimizer is not None
    seen, step = [], setup.train_step

    def spy(model, batch):
        seen.append(batch["label"].clone())
        return step(model, batch)

    setup.train_step = spy
    before = [p.detach().clone() for p in setup.model.parameters()]
    d = check_setup(setup, steps=6)
    assert len(seen) == 6  # one call of the user's step per training step
    assert len({tuple(y.tolist()) for y in seen}) == 6  # six different batches, not one repeated
    assert d.context["steps"] == list(range(6))
    # judged under the user's Adam (diagnose/impact.py): the vanishing signal is only noted (Adam rescales it),
    # while the first layers, whose gradient is below Adam's eps, stall
    severity = {f.kind: f.severity for f in d.findings}
    assert severity.get("vanishing") == "info" and severity.get("stalled_layers") == "warning", severity
    moved = [not torch.equal(a, b) for a, b in zip(before, setup.model.parameters())]
    assert all(moved)  # the user's optimizer (Adam) trained every parameter


def test_make_optimizer_is_the_users():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    batches = [(torch.randn(16, 4), torch.randint(0, 3, (16,))) for _ in range(3)]
    made = []

    def make_optimizer(params):
        made.append(torch.optim.RMSprop(params, lr=1e-3))
        return made[-1]

    setup = setup_from((model, batches, lambda model, batch: torch.nn.functional.cross_entropy(
        model(batch[0]), batch[1]), make_optimizer), "test")
    check_setup(setup, steps=4)
    assert len(made) == 1 and made[0].state  # RMSprop stepped: it has per-parameter state


@pytest.mark.parametrize("result, step, loss_fn", [
    (lambda m, x, y: (m, x, y), False, False),
    (lambda m, x, y: (m, (x, y)), False, False),
    (lambda m, x, y: (m, (x, y), torch.nn.functional.cross_entropy), False, True),
    (lambda m, x, y: (m, (x, y), torch.nn.CrossEntropyLoss()), False, True),
    (lambda m, x, y: (m, [(x, y)], lambda model, batch: model(batch[0]).sum()), True, False),
    (lambda m, x, y: (m, [(x, y)], lambda out, y: out.sum()), False, True),
    (lambda m, x, y: {"model": m, "loader": [(x, y)], "train_step": lambda m, b: m(b[0]).sum()}, True, False),
], ids=["model-x-y", "model-pair", "loss-function", "loss-module", "train-step", "loss-lambda", "dict"])
def test_factory_forms(result, step, loss_fn):
    model = torch.nn.Linear(4, 3)
    s = setup_from(result(model, torch.randn(8, 4), torch.randint(0, 3, (8,))), "test")
    assert s.model is model and s.user_step == step and (s.loss_fn is not None) == loss_fn
    loss = s.loss(next(s.batches()))
    assert loss.dim() == 0 and loss.requires_grad


@pytest.fixture(scope="module")
def bad():
    return EXAMPLES.parent / "mistakes.py"


@pytest.mark.parametrize("factory", ["dict_model", "tuple_model"])
def test_dict_and_tuple_outputs_are_diagnosed(bad, factory, capsys):
    assert main(["check", f"{bad}:{factory}", "--steps", "2", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in d["context"]["table"]] == ["lin"]


# Each bad input: its factory, the steps, and what the one line must say. The report lists them.
BAD_INPUTS = [
    ("no_tensor", 0, "returned dict with no tensor in it"),
    ("targets_out_of_range", 0, "targets must be class indices in [0, 3)"),
    ("backward_raises", 0, "the backward pass failed: RuntimeError: custom backward exploded"),
    ("frozen", 0, "is frozen (requires_grad=False)"),
    ("raises", 0, "raised RuntimeError: cannot build the model"),
    ("step_raises", 0, "train_step from"),
    ("step_not_scalar", 0, "must return a scalar loss, got a tensor of shape (16, 3)"),
    ("step_detached", 0, "does not depend on any trainable parameter"),
    ("step_returns_text", 0, "must return the loss"),
    ("bad_optimizer", 2, "make_optimizer from"),
    ("one_shot", 5, "is an iterator that ran out after 2 batches"),
    ("empty", 0, "yielded no batches"),
    ("not_a_model", 0, "must return a model"),
    ("bad_batch", 0, "each batch must be (inputs, targets)"),
    ("wrong_shape", 0, "the model failed on inputs of shape (16, 4)"),
    ("missing", 0, "has no factory 'missing'; functions there: backward_raises, bad_batch"),
]


@pytest.mark.parametrize("factory, steps, message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_user_setup_is_one_line_exit_2(bad, factory, steps, message, capsys):
    assert main(["check", f"{bad}:{factory}", "--steps", str(steps)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("graddoctor: error:") and message in err and "\n" not in err, err
    assert "Traceback" not in captured.out + captured.err
