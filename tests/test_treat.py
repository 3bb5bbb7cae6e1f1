"""treat() end to end on real small runs: it must find, and prove, a fix."""
import copy
import json
import math
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import graddoctor as gd
from graddoctor import NetSpec, TrainConfig
from graddoctor import data as data_mod
from graddoctor.cli import main
from graddoctor.errors import GradDoctorError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "models.py"


@pytest.fixture(scope="module")
def digits():
    return data_mod.digits(seed=0)


@pytest.fixture(scope="module")
def sigmoid_result(digits):
    """The issue's case: a 20-layer sigmoid MLP (Glorot init, SGD) on digits."""
    spec = NetSpec(depth=20, width=64, in_shape=digits.in_shape, out_features=10, activation="sigmoid",
                   init="xavier_normal")
    return gd.treat(spec, digits, budget_steps=160, seed=0, config=TrainConfig(lr=0.01), progress_bar=False)


def test_treat_finds_a_fix_for_the_deep_sigmoid_mlp(sigmoid_result):
    r = sigmoid_result
    assert "vanishing" in r.diagnosis.kinds()
    assert r.baseline.val_acc < 0.2  # the untreated net stays near chance (10 classes)
    best = r.best
    assert best is not None and best.fixed
    assert best.val_acc >= 0.90
    assert best.loss < r.baseline.loss / 4
    assert "vanishing" not in best.after.kinds()
    assert best.steps == r.budget_steps == r.baseline.steps  # the same budget as the baseline
    assert best.patient.spec != r.baseline.patient.spec and best.changes


def test_the_table_has_one_row_per_candidate_and_measures_each(sigmoid_result):
    r = sigmoid_result
    rows = r.table
    assert rows[0]["remedy"] == "baseline" and len(rows) == len(r.trials) >= 4
    labels = [row["remedy"] for row in rows]
    assert labels[1].startswith("swap_activation")  # the top cause is the saturating activation
    assert len(set(labels)) == len(labels)
    assert rows[0]["ratio_init"] < 1e-3  # 20 sigmoid layers: the first layer's signal has vanished
    for row, t in zip(rows, r.trials):
        assert set(row) >= {"remedy", "status", "healthy_after", "ratio_init", "ratio_after", "loss",
                            "val_acc", "seconds"}
        if t.status in ("fixed", "not fixed"):  # finalists: trained the whole budget, re-diagnosed
            assert t.steps == r.budget_steps and row["healthy_after"] is not None
        if t.status == "stopped after pilot":
            assert t.steps == r.pilot_steps < r.budget_steps
        if t.status == "dropped at init":  # screening: no training at all
            assert t.steps == 0 and t.at_init.kinds() & {"vanishing", "exploding", "non_finite"}
    fixed_ratio = next(row for row in rows if row["status"] == "fixed")
    assert fixed_ratio["ratio_init"] > 1e-2  # the fix restores the first layer's signal at init
    assert sum(t.seconds for t in r.trials) <= r.seconds + 1e-6


def test_printed_result_names_the_winner_and_its_changes(sigmoid_result):
    text = str(sigmoid_result)
    best = sigmoid_result.best
    assert text.splitlines()[0].startswith("treating: ") and "vanishing" in text.splitlines()[0]
    assert f"best: {best.label}" in text and str(best.changes[0]) in text
    assert text.splitlines()[-1] == f"total time {sigmoid_result.seconds:.1f} s"  # the measured time, printed


class FunctionalSigmoidNet(nn.Module):
    """A user model whose sigmoid is applied with torch.sigmoid: cannot be swapped."""

    def __init__(self, depth: int = 12) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(64, 64) for _ in range(depth))
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        for layer in self.layers:
            x = torch.sigmoid(layer(x))
        return self.head(x)


def test_user_model_is_never_modified_and_functional_activations_are_swapped(digits):
    torch.manual_seed(0)
    model = FunctionalSigmoidNet()
    state, text = copy.deepcopy(model.state_dict()), repr(model)
    r = gd.treat(model, digits, nn.CrossEntropyLoss(), budget_steps=40, seed=0, progress_bar=False)
    assert repr(model) == text and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not model._forward_hooks and not model._forward_pre_hooks
    best = r.best
    assert best is not None and best.label.startswith("swap_activation")
    assert sum(c.op == "function" for c in best.changes) == 12  # torch.sigmoid in forward(), swapped
    prelu = next(t for t in r.trials if t.label == "swap_activation(prelu)")
    assert prelu.status == "not applicable" and "needs a module" in prelu.note
    assert f"swap_activation(prelu): {prelu.note}" in str(r)  # every remedy that does not apply says why


def test_healthy_model_gets_zero_changes(digits):
    spec = NetSpec(depth=4, width=32, in_shape=digits.in_shape, activation="relu", init="he_normal")
    r = gd.treat(spec, digits, budget_steps=20, progress_bar=False)
    assert r.diagnosis.healthy and len(r.trials) == 1 and r.best is None
    assert str(r).startswith("HEALTHY: nothing to treat")
    given = gd.treat(spec, digits, diagnosis=r.diagnosis, budget_steps=20, progress_bar=False)
    assert given.trials[0].steps == 0  # a healthy diagnosis given: nothing is even trained
    assert 0 < given.seconds < r.seconds and len(given.trials) == 1


def test_exploding_learning_rate_is_tuned_down(digits):
    spec = NetSpec(depth=8, width=32, in_shape=digits.in_shape, activation="relu", init="he_normal")
    r = gd.treat(spec, digits, budget_steps=40, config=TrainConfig(lr=3.0), progress_bar=False)
    assert r.diagnosis.kinds() & {"exploding", "non_finite"} and math.isinf(r.baseline.loss)
    assert r.best is not None and math.isfinite(r.best.loss)
    assert r.best.loss < r.prior_loss and r.best.val_acc > 0.2  # it learns (chance: 0.1)
    # lr/10 stops the explosion but leaves a vanishing, dead network: not counted as a fix
    assert all(not t.fixed for t in r.trials if t.after and t.after.kinds() & {"vanishing", "exploding"})
    assert any(c.module_path in ("config.lr", "config.clip_norm") for c in r.best.changes)


def test_bad_arguments_fail_with_one_clear_error(digits):
    spec = NetSpec(depth=3, width=8, in_shape=digits.in_shape)
    with pytest.raises(GradDoctorError, match="budget_steps must be at least 2"):
        gd.treat(spec, digits, budget_steps=1, progress_bar=False)
    with pytest.raises(GradDoctorError, match=r"must be a NetSpec, an nn\.Module or a function"):
        gd.treat(lambda: "not a model", digits, progress_bar=False)
    with pytest.raises(GradDoctorError, match="one-shot iterator"):
        gd.treat(nn.Linear(64, 10), iter([(digits.x_train[:8], digits.y_train[:8])]), progress_bar=False)
    with pytest.raises(GradDoctorError, match=r"not \(inputs, targets\): pass train_step"):
        gd.treat(nn.Linear(64, 10), [{"x": digits.x_train[:8]}], progress_bar=False)
    with pytest.raises(GradDoctorError, match=r"make_optimizer\(params\) must return a torch\.optim\.Optimizer"):
        gd.treat(nn.Linear(64, 10), [(digits.x_train[:8], digits.y_train[:8])], make_optimizer=lambda p: 3,
                 progress_bar=False)


def test_cli_treat_prints_the_table_and_the_flags_to_rerun(capsys):
    from graddoctor.cli.common import spec_flags
    from graddoctor.remedies import Patient, get

    code = main(["treat", "--depth", "12", "--width", "32", "--activation", "sigmoid", "--init",
                 "xavier_normal", "--budget-steps", "40", "--no-pairs"])
    out = capsys.readouterr().out
    label = re.search(r"^best: (\S+) \(loss", out, re.M).group(1)
    rerun = next(line for line in out.splitlines() if line.startswith("re-run the winner: "))
    spec = NetSpec(depth=12, width=32, in_shape=(64,), out_features=10, activation="sigmoid", init="xavier_normal")
    winner = get(label).apply(Patient(TrainConfig(), spec=spec)).spec  # what the winning remedy makes of the flags
    assert code == 0 and winner != spec
    assert rerun == f"re-run the winner: graddoctor train {spec_flags(winner)} --data digits"


def test_cli_treat_user_factory_saves_the_winner_and_it_reloads(tmp_path, capsys):
    import importlib.util

    out = tmp_path / "treated"
    code = main(["treat", f"{EXAMPLES}:deep_sigmoid", "--budget-steps", "40", "--no-pairs", "--save", str(out)])
    text = capsys.readouterr().out
    saved = json.loads((out / "changes.json").read_text())
    assert code == 0 and f"best: {saved['remedy']} (loss {saved['loss']:.4f} vs baseline" in text
    assert (out / "state_dict.pt").exists()
    spec = importlib.util.spec_from_file_location("examples_models", EXAMPLES)
    examples = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(examples)
    model = gd.load_treated(examples.deep_sigmoid(), out)  # the user's class, made the winner
    state = torch.load(out / "state_dict.pt", weights_only=True)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_cli_treat_bad_input_is_one_line_and_exit_2(capsys):
    assert main(["treat", "--budget-steps", "0"]) == 2
    assert main(["treat", "nofile.py:f"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("graddoctor: error: ") for line in err)


def test_max_steps_bounds_the_whole_treatment(digits):
    spec = NetSpec(depth=20, width=32, in_shape=digits.in_shape, out_features=10, activation="sigmoid",
                   init="xavier_normal")
    r = gd.treat(spec, digits, budget_steps=40, max_steps=100, config=TrainConfig(lr=0.01), pairs=False,
                 progress_bar=False)
    assert r.steps <= 100 and r.max_steps == 100
    # baseline 40, then a pilot of 10 if one finalist's rest (30) still fits after it (40 + 10 + 30), a
    # second pilot only if both finalists' rests do (50 + 10 + 60 > 100): one candidate, trained in full
    assert [t.steps for t in r.trials if t.steps] == [40, 40]
    skipped = [t for t in r.trials if t.status == "not tried"]
    assert skipped and all(t.steps == 0 and "over the budget" in t.note for t in skipped)
    with pytest.raises(GradDoctorError, match="max_steps must be at least 2 x budget_steps"):
        gd.treat(spec, digits, budget_steps=40, max_steps=60, progress_bar=False)
