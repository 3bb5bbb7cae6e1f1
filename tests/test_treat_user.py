"""treat() in the user's own loop: their train_step, their optimizer, their streamed data; the
winner re-applied to a fresh instance of their class (changes + state dict, bit-identical)."""
import hashlib
import json
import math
import time

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import graddoctor as gd
from graddoctor.errors import GradDoctorError
from graddoctor.remedies import StepSettings
from graddoctor.remedies.loop import LossScaler, lr_factor, start_run, train_steps

VOCAB, DIM, SEQ, BATCH = 32, 32, 12, 16


class TinyLM(nn.Module):
    """A per-token language model: embedding, `depth` Linear layers with torch.sigmoid in forward(), head."""

    def __init__(self, depth: int = 12, scale: float = 1.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.layers = nn.ModuleList(nn.Linear(DIM, DIM) for _ in range(depth))
        self.head = nn.Linear(DIM, VOCAB)
        with torch.no_grad():
            for p in self.layers.parameters():
                p.mul_(scale)

    def forward(self, input_ids):
        h = self.embed(input_ids)
        for layer in self.layers:
            h = torch.sigmoid(layer(h))
        return self.head(h)


def lm_step(model: nn.Module, batch: dict) -> torch.Tensor:
    """The user's causal-LM step: next-token cross-entropy on a dict batch."""
    logits = model(batch["input_ids"])
    return F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), batch["input_ids"][:, 1:].reshape(-1))


def markov_batches(seed: int = 0):
    """Endless dict batches of a deterministic chain (next = 5 * token + 3 mod VOCAB): learnable per token."""
    g = torch.Generator().manual_seed(seed)
    while True:
        start = torch.randint(0, VOCAB, (BATCH, 1), generator=g)
        ids = [start]
        for _ in range(SEQ - 1):
            ids.append((5 * ids[-1] + 3) % VOCAB)
        yield {"input_ids": torch.cat(ids, 1)}


def adamw(params):
    opt = torch.optim.AdamW(params, lr=3e-3)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)


def digest(batch: dict) -> str:
    return hashlib.sha1(batch["input_ids"].numpy().tobytes()).hexdigest()[:8]


@pytest.fixture(scope="module")
def lm_result():
    """A 12-layer sigmoid language model, endless streamed data, the user's step and AdamW + scheduler."""
    seen: dict[int, list[str]] = {}

    def step(model, batch):
        seen.setdefault(id(model), []).append(digest(batch))
        return lm_step(model, batch)

    torch.manual_seed(0)
    model = TinyLM()
    result = gd.treat(model, lambda: markov_batches(0), train_step=step, make_optimizer=adamw, budget_steps=40,
                      seed=0, progress_bar=False)
    return model, result, seen


def test_a_language_model_is_repaired_in_the_users_own_step(lm_result):
    _, r, _ = lm_result
    # under AdamW the small gradient itself is no harm, the layers that stop moving are; at init
    # (no optimizer yet) the checkup shows the vanishing gradient and the sigmoids behind it
    assert r.diagnosis.kinds() >= {"stalled_layers"} and "vanishing" in r.baseline.at_init.kinds()
    best = r.best
    assert best is not None and best.label.startswith("swap_activation")
    assert best.loss < 0.5 * r.baseline.loss  # next-token loss, the mean of the last quarter of steps
    assert math.isnan(best.val_acc)  # streamed data: no validation set, no accuracy invented
    assert best.steps == r.baseline.steps == 40


def test_every_candidate_sees_the_same_batches_in_the_same_order(lm_result):
    _, r, seen = lm_result
    runs = [s[1:] if len(s) > 1 and s[0] == s[1] else s for s in seen.values()]  # drop the screening call
    trained = [s for s in runs if len(s) >= r.pilot_steps]
    assert len(trained) >= 3
    assert all(s[:r.pilot_steps] == trained[0][:r.pilot_steps] for s in trained)
    full = [s for s in trained if len(s) == r.budget_steps]
    assert len(full) >= 2 and all(s == full[0] for s in full)  # baseline and finalists: identical


def test_the_winner_reloads_into_a_fresh_instance_of_the_users_class(lm_result, tmp_path):
    _, r, _ = lm_result
    best = r.best
    r.save(tmp_path)
    doc = json.loads((tmp_path / "changes.json").read_text())
    assert doc["model_class"] == "TinyLM" and len(doc["changes"]) == len(best.changes)
    fresh = gd.load_treated(TinyLM(), tmp_path)
    ids = next(markov_batches(7))["input_ids"]
    best.model.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(best.model(ids), fresh(ids))  # bit-identical
    again = gd.apply_changes(TinyLM(), best.changes)  # the treated initial network, to train yourself
    assert set(again.state_dict()) == set(best.model.state_dict())


def test_loading_never_unpickles(lm_result, tmp_path):
    _, r, _ = lm_result
    r.save(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"x": Evil()}, tmp_path / "state_dict.pt")
    with pytest.raises(GradDoctorError, match=r"cannot load .*state_dict\.pt as weights only"):
        gd.load_treated(TinyLM(), tmp_path)
    (tmp_path / "changes.json").write_text(json.dumps({"changes": [
        {"module_path": "layers.0", "before": "", "after": "", "op": "set_module",
         "args": {"cls": "os.system", "kwargs": {}}}]}))
    with pytest.raises(GradDoctorError, match=r"unknown module class in a change 'os\.system'"):
        gd.load_treated(TinyLM(), tmp_path)


def test_the_users_model_is_untouched_and_has_no_hooks(lm_result):
    model, _, _ = lm_result
    assert not model._forward_hooks and not model._forward_pre_hooks and not hasattr(model, "_gd_swap")


def test_lr_scale_and_warmup_wrap_the_users_optimizer_and_scheduler():
    model = nn.Linear(4, 1)
    seen = []

    def make(params):
        opt = torch.optim.SGD(params, lr=0.5)
        return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)

    run = start_run(model, make, StepSettings(lr_scale=0.1, warmup_steps=4))
    run.optimizer.register_step_pre_hook(lambda opt, *a: seen.append(opt.param_groups[0]["lr"]))
    batches = iter([(torch.randn(8, 4), torch.randn(8, 1))] * 6)
    train_steps(run, batches, lambda m, b: F.mse_loss(m(b[0]), b[1]), 6)
    expected = [0.5 * 0.1 * min(1, (t + 1) / 4) * 0.1 ** (t // 2) for t in range(6)]
    assert seen == pytest.approx(expected)  # the user's StepLR underneath, our factor on top
    assert run.optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * 0.1 ** 3)  # restored after each step
    assert [lr_factor(StepSettings(warmup_steps=2), t) for t in range(3)] == [0.5, 1.0, 1.0]


def test_a_deadline_stops_the_loop_before_a_step_that_would_pass_it():
    model = nn.Linear(4, 1)
    run = start_run(model, lambda p: torch.optim.SGD(p, lr=0.1), StepSettings())
    batches = iter([(torch.randn(8, 4), torch.randn(8, 1))] * 10)
    step = lambda m, b: F.mse_loss(m(b[0]), b[1])
    assert train_steps(run, batches, step, 3, deadline=time.perf_counter() - 1) == [] and run.step == 0
    assert len(train_steps(run, batches, step, 3, deadline=time.perf_counter() + 60)) == 3


def test_loss_scaling_rescues_float16_gradients_that_underflow():
    torch.manual_seed(0)
    x, y = torch.randn(64, 16).half(), torch.randint(0, 4, (64,))
    grads = {}
    for scaled in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 4)).half()
        with torch.no_grad():
            model[1].weight.mul_(1e-5)  # a tiny error signal reaches layer 0: below float16's smallest number
        run = start_run(model, lambda p: torch.optim.SGD(p, lr=0.0), StepSettings(loss_scale=scaled))
        train_steps(run, iter([(x, y)]), lambda m, b: F.cross_entropy(m(b[0]).float(), b[1]), 1)
        grads[scaled] = model[0].weight.grad.float()
    # measured: 72% of layer 0's gradient flushed to zero without a scale, 23% with (float16 parameters
    # hold the unscaled gradient, so what is below float16's range after unscaling is still lost)
    assert (grads[False] == 0).float().mean() > 0.5
    assert (grads[True] == 0).float().mean() < 0.4
    s = LossScaler()
    model = nn.Linear(2, 2)
    model.weight.grad = torch.full((2, 2), float("inf"))
    assert not s.unscale([model.weight]) and float(s._scale) == LossScaler.INIT / 2  # overflow: halve, skip


def test_changes_for_another_class_fail_with_one_clear_error(lm_result):
    _, r, _ = lm_result
    with pytest.raises(GradDoctorError, match="fresh instance of the class that was treated"):
        gd.apply_changes(nn.Sequential(nn.Linear(4, 4)), r.best.changes)


FACTORY = '''
import torch
from torch import nn
from torch.nn import functional as F


class FunctionalTanhLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(32, 32)
        self.layers = nn.ModuleList(nn.Linear(32, 32) for _ in range(12))
        self.head = nn.Linear(32, 32)

    def forward(self, ids):
        h = self.embed(ids)
        for layer in self.layers:
            h = torch.sigmoid(layer(h))
        return self.head(h)


def step(model, batch):
    logits = model(batch["input_ids"])
    return F.cross_entropy(logits[:, :-1].reshape(-1, 32), batch["input_ids"][:, 1:].reshape(-1))


def setup():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    starts = torch.randint(0, 32, (8, 16, 1), generator=g)
    batches = [{"input_ids": torch.cat([(5 ** k * s + 3 * sum(5 ** j for j in range(k))) % 32
                                        for k in range(12)], 1)} for s in starts]
    return FunctionalTanhLM(), batches, step, lambda params: torch.optim.AdamW(params, lr=3e-3)
'''


def test_cli_treats_a_factory_in_its_own_step_and_saves_a_winner_that_reloads(tmp_path, capsys):
    import importlib.util

    from graddoctor.cli import main

    path = tmp_path / "my_lm.py"
    path.write_text(FACTORY)
    out = tmp_path / "treated"
    code = main(["treat", f"{path}:setup", "--budget-steps", "40", "--max-steps", "200", "--save", str(out)])
    text = capsys.readouterr().out
    assert code == 0 and "its train_step, its make_optimizer" in text and "best: swap_activation" in text
    spec = importlib.util.spec_from_file_location("my_lm", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = gd.load_treated(mod.FunctionalTanhLM(), out)
    ids = mod.setup()[1][0]["input_ids"]
    assert torch.isfinite(mod.step(model, {"input_ids": ids}))
    assert sum(c["op"] == "function" for c in json.loads((out / "changes.json").read_text())["changes"]) == 12
