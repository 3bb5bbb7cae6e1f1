"""`graddoctor run -- python script.py`: the models found, their statistics, and the script left as it is."""
from __future__ import annotations

import ast
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import need
from torch import nn
from torch.nn import functional as F
from torch.optim import optimizer as optim_hooks

import graddoctor
from graddoctor.cli import main
from graddoctor.integrations import autowatch
from graddoctor.integrations.autowatch import AutoWatch
from graddoctor.probe.trace import LAYER_METRICS
from graddoctor.store import RunStore

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent / "scripts"


def _mlp(seed: int = 0, depth: int = 4) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(16, 16), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(16, 3))


def _batches(n: int = 6, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(32, 16, generator=g), torch.randint(0, 3, (32,), generator=g)) for _ in range(n)]


def _loop(model, opt, batches, probe=None, accumulate=1, closure=False) -> None:
    """A plain training loop; with `probe`, the user's own watch() calls (the oracle)."""
    for i in range(0, len(batches), accumulate):
        group = batches[i:i + accumulate]

        def compute():
            opt.zero_grad()
            total = 0.0
            for x, y in group:
                loss = F.cross_entropy(model(x), y) / accumulate
                loss.backward()
                total = total + loss.detach()
            return total

        if closure:
            total = opt.step(compute)
        else:
            total = compute()
            opt.step()
        if probe is not None:
            probe.step(total)


def _same(a: graddoctor.Trace, b: graddoctor.Trace) -> None:
    assert a.layer_names == b.layer_names and list(a.steps) == list(b.steps)
    for m in LAYER_METRICS:
        np.testing.assert_allclose(a[m], b[m], rtol=1e-6, atol=0, equal_nan=True, err_msg=m)
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-6, equal_nan=True)


@pytest.mark.parametrize("accumulate, closure", [(1, False), (2, False), (1, True)],
                         ids=["plain", "accumulate-2", "closure"])
def test_autowatch_records_what_watch_records(accumulate, closure):
    # oracle: the same loop with graddoctor.watch(model, optimizer=opt) and probe.step(loss)
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with graddoctor.watch(model, optimizer=opt, every=2) as probe:
        _loop(model, opt, _batches(), probe, accumulate)
    model2 = _mlp()
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    with AutoWatch(every=2) as aw:
        _loop(model2, opt2, _batches(), accumulate=accumulate, closure=closure)
    (w,) = aw.trained
    assert w.model is model2 and w.optimizer is opt2 and w.first_step == 0 and w.steps == 6 // accumulate
    _same(w.probe.trace, probe.trace)
    assert np.isfinite(w.probe.trace["delta_rms"][0]).all()  # step 0 (at initialisation) recorded whole


def test_two_models_two_optimizers_are_watched_apart():
    torch.manual_seed(0)
    gen, disc = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8)), nn.Sequential(nn.Linear(8, 1))
    og, od = torch.optim.Adam(gen.parameters(), 1e-3), torch.optim.SGD(disc.parameters(), 0.1)
    d_losses, g_losses = [], []
    with AutoWatch() as aw:
        for _ in range(3):
            fake = gen(torch.randn(16, 4))
            d_loss = disc(fake.detach()).mean()
            od.zero_grad()
            d_loss.backward()
            od.step()
            g_loss = -disc(fake).mean()
            og.zero_grad()
            g_loss.backward()
            og.step()
            d_losses.append(d_loss.item())
            g_losses.append(g_loss.item())
    by = {w.name: w for w in aw.trained}
    assert set(by) == {"Sequential", "Sequential#2"}
    assert by["Sequential"].model is gen and by["Sequential#2"].model is disc  # in forward order
    np.testing.assert_allclose(by["Sequential"].probe.trace["loss"], g_losses, rtol=1e-6)
    np.testing.assert_allclose(by["Sequential#2"].probe.trace["loss"], d_losses, rtol=1e-6)


def test_one_optimizer_over_two_modules_watches_both():
    a, b = nn.Linear(4, 8), nn.Linear(8, 2)
    opt = torch.optim.SGD([*a.parameters(), *b.parameters()], lr=0.1)
    with AutoWatch() as aw:
        for _ in range(2):
            loss = b(torch.tanh(a(torch.randn(8, 4)))).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert [w.model for w in aw.trained] == [a, b] and all(w.steps == 2 for w in aw.trained)


def test_a_forward_before_the_optimizer_exists_and_a_late_discovery(monkeypatch):
    model = _mlp()
    model(torch.randn(2, 16))  # e.g. shape inference, before the optimizer is made
    with AutoWatch() as aw:
        model(torch.randn(2, 16))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        _loop(model, opt, _batches(3))
    assert aw.trained[0].first_step == 0 and len(aw.trained[0].probe.trace) == 3
    monkeypatch.setattr(autowatch, "MAX_SCANS", 0)  # no discovery on forward: found at its first step
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with AutoWatch() as aw:
        _loop(model, opt, _batches(3))
    (w,) = aw.trained
    assert w.first_step == 1 and w.steps == 2 and np.isfinite(w.probe.trace["delta_rms"][0]).all()


def test_hooks_are_removed_and_training_is_unchanged():
    model, ref = _mlp(), _mlp()
    opt, opt_ref = torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(ref.parameters(), lr=0.1)
    backward = torch.autograd.backward
    with AutoWatch() as aw:
        _loop(model, opt, _batches())
    _loop(ref, opt_ref, _batches())
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), ref.parameters()))
    assert torch.autograd.backward is backward and aw.trained[0].probe._closed
    assert not torch.nn.modules.module._global_forward_pre_hooks
    assert not optim_hooks._global_optimizer_pre_hooks and not optim_hooks._global_optimizer_post_hooks


# -- the command -------------------------------------------------------------------------------

SEMANTICS = """
import os, pickle, sys
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)
    def forward(self, x):
        return self.lin(x)

if __name__ == "__main__":
    print("argv", sys.argv)
    print("file", __file__)
    print("path0", sys.path[0])
    print("data", open("data.txt").read().strip())  # relative to the working directory
    net = Net()
    print("pickled", type(pickle.loads(pickle.dumps(net))).__name__)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(2):
        loss = net(torch.randn(4, 3)).pow(2).mean()
        opt.zero_grad(); loss.backward(); opt.step()
    sys.exit(3)
"""

RAISES = """
import torch
from torch import nn

def train():
    net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for step in range(10):
        loss = net(torch.randn(4, 3)).pow(2).mean()
        opt.zero_grad(); loss.backward(); opt.step()
        if step == 3:
            raise {exc}("data loader broke at step 3")

train()
"""


def _run(tmp_path, *command, options=()) -> tuple[int, RunStore]:
    store = tmp_path / "runs.db"
    code = main(["run", "--store", str(store), "--no-report", *options, "--", *command])
    return code, store


def test_script_semantics_and_exit_code(tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    (work / "data.txt").write_text("relative ok\n")
    script = tmp_path / "scripts" / "train.py"
    script.parent.mkdir()
    script.write_text(SEMANTICS)
    monkeypatch.chdir(work)
    argv, path0 = sys.argv[:], sys.path[0]
    code, store = _run(tmp_path, "python", "../scripts/train.py", "--lr", "0.1")
    out, err = capsys.readouterr()
    assert code == 3
    assert "argv ['../scripts/train.py', '--lr', '0.1']" in out
    assert f"file {work}/../scripts/train.py" in out  # absolute, not normalised: as python gives it
    assert f"path0 {script.parent}" in out
    assert "data relative ok" in out and "pickled Net" in out
    assert "graddoctor: Net (trained by SGD): 2 steps" in err and "graddoctor" not in out
    assert sys.argv == argv and sys.path[0] == path0  # restored
    with RunStore(store) as st:
        (info,) = st.runs()
    assert info.kind == "run" and info.status == "failed" and info.spec["model"] == "Net"  # exit 3
    assert info.config["command"] == "python ../scripts/train.py --lr 0.1"


@pytest.mark.parametrize("exc, code, status", [("ValueError", 1, "failed"), ("KeyboardInterrupt", 130, "interrupted")])
def test_a_script_that_raises_is_still_diagnosed(tmp_path, capsys, exc, code, status):
    script = tmp_path / "broken.py"
    script.write_text(RAISES.format(exc=exc))
    got, store = _run(tmp_path, "python", str(script), options=["--every", "1"])
    err = capsys.readouterr().err
    assert got == code
    tb = err[err.index("Traceback (most recent call last):"):]
    assert tb.splitlines()[1] == f'  File "{script}", line 14, in <module>'  # from the script's first frame
    assert "graddoctor" not in tb[:tb.index(f"{exc}: data loader broke")]  # none of graddoctor's frames
    assert "graddoctor: Sequential (trained by SGD): 4 steps, 4 recorded" in err and "verdict:" in err
    with RunStore(store) as st:
        (info,) = st.runs()
    assert info.status == status and info.n_steps == 4 and info.verdict is not None


def test_module_form_and_a_script_that_trains_nothing(tmp_path, monkeypatch, capsys):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "job.py").write_text("import sys\nif __name__ == '__main__':\n    print('job', sys.argv[1:])\n")
    monkeypatch.chdir(tmp_path)
    code, _ = _run(tmp_path, "python", "-m", "pkg.job", "a", "b")
    out, err = capsys.readouterr()
    assert code == 0 and out == "job ['a', 'b']\n"
    assert "no model was trained (no torch optimizer stepped)" in err


@pytest.mark.parametrize("command, message", [
    ([], "no command to run"),
    (["torchrun", "train.py"], "not 'torchrun'"),
    (["python", "missing.py"], "no such file: missing.py"),
    (["python", "-X", "dev", "train.py"], "python option '-X' is not supported"),
    (["python", "-c", "print(1)"], "not python -c code: put the code in a file"),
    (["python", "-m", "no_such_module_here"], "no module named 'no_such_module_here'"),
], ids=["empty", "launcher", "no-file", "option", "code", "no-module"])
def test_bad_command_is_one_line_exit_2(tmp_path, capsys, command, message):
    assert main(["run", "--store", str(tmp_path / "r.db"), "--", *command]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("graddoctor: error:") and message in err and "\n" not in err


def test_lightning_script_is_found_and_recorded_from_step_0(tmp_path, capsys):
    need("lightning")
    code, store = _run(tmp_path, "python", str(SCRIPTS / "lightning_mlp.py"), "5", options=["--every", "1"])
    out, err = capsys.readouterr()
    assert code == 0 and "trained 5 steps" in out
    assert "graddoctor: Net (trained by SGD): 5 steps, 5 recorded" in err and "VANISHING" in err
    with RunStore(store) as st:
        (info,) = st.runs()
        trace = st.load_trace(info.id)
    assert list(trace.steps) == [0, 1, 2, 3, 4] and np.isfinite(trace["delta_rms"]).all()
    assert np.isfinite(trace["loss"]).all() and info.verdict == "vanishing"


def test_hf_trainer_script_losses_match_the_trainers(tmp_path, capsys):
    need("transformers")
    need("accelerate")  # the HF Trainer needs it
    code, store = _run(tmp_path, "python", str(SCRIPTS / "hf_trainer.py"), "3", "2", options=["--every", "1"])
    out = capsys.readouterr().out
    assert code == 0
    logged = ast.literal_eval(out[out.index("losses ") + 7:].splitlines()[0])  # the Trainer's own per-step losses
    with RunStore(store) as st:
        (info,) = st.runs()  # one model, though accelerate wraps the optimizer
        steps = st.steps(info.id)
    assert info.spec["model"] == "GPT2LMHeadModel" and info.spec["optimizer"] == "AdamW"
    assert len(steps) == 3 and [round(s[1], 4) for s in steps] == logged  # gradient accumulation: 2 per step


def test_the_real_command_leaves_the_scripts_output_alone(tmp_path, monkeypatch, capsys):
    script = [str(ROOT / "examples" / "train_mlp.py"), "--epochs", "1"]
    monkeypatch.setattr(sys, "argv", script)
    runpy.run_path(script[0], run_name="__main__")  # the script alone: its output is the reference
    plain = capsys.readouterr().out
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "graddoctor", "run", "--every", "5", "--", "python", *script],
                         capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout == plain and plain.startswith("epoch 1: train loss")
    assert "verdict: " in run.stderr and "VANISHING" in run.stderr
    report = tmp_path / "graddoctor-runs" / "report-1.html"
    assert "graddoctor: run 1 in graddoctor-runs/runs.db; report: graddoctor-runs/report-1.html" in run.stderr
    assert report.stat().st_size > 10_000
    with RunStore(tmp_path / "graddoctor-runs" / "runs.db") as st:
        (info,) = st.runs()
        losses = [s[1] for s in st.steps(info.id)]
    assert info.status == "done" and "vanishing" in info.verdict and info.n_steps == 5  # 22 steps, every 5
    assert len(losses) == 22 and np.isfinite(losses).all()  # every step's loss, recorded or not


def test_help_has_an_example(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "graddoctor run -- python examples/train_mlp.py" in capsys.readouterr().out


def test_command_forms(tmp_path):
    from graddoctor.integrations.script import Command, parse_command

    script = tmp_path / "train.py"
    script.write_text("")
    assert parse_command(["--", "python3.11", "-u", str(script), "--lr", "1"]) == Command(
        str(script), ("--lr", "1"), False, "python3.11", True)
    assert parse_command([str(script), "-m", "x"]) == Command(str(script), ("-m", "x"))  # the script's own -m
    assert parse_command(["python", "-B", "-m", "pkg.train", "-v"]) == Command("pkg.train", ("-v",), True, "python")
