"""`graddoctor run`, `check` on the user's data and the HF callback: what they cost and what they print.

    python benchmarks/run.py            # ~2 min on 2 CPU cores

Writes, for docs/run.md and docs/integrations.md (which include them):
- docs/results/run.json, run.md: the cost of watching an unmodified script. examples/train_mlp.py
  (a 16-layer sigmoid MLP on digits, batch 64) run in this process: plain, under AutoWatch with
  --every 10 and --every 1 (the hooks alone), and the whole `graddoctor run` command (hooks, run
  store, diagnosis, HTML report) — interleaved, REPEATS times, medians and ratios to plain; and
  the same loop with graddoctor.watch() written into it against AutoWatch; and the one heap scan
  that finds the models (gc), with transformers and Lightning imported.
- docs/results/run-train_mlp.txt: what `graddoctor run -- python examples/train_mlp.py` prints
  (at 80 columns: the script's stdout, then graddoctor's report on stderr).
- docs/results/check-digits_training.txt: `graddoctor check examples/models.py:digits_training
  --steps 30` (the user's loader, train_step and optimizer), at 80 columns.
- docs/results/check-mistakes.md: each mistake in examples/mistakes.py and the one line check prints.
- docs/results/hf-callback.txt: what examples/train_hf.py prints (the Trainer's logs with the
  callback's scalars, the diagnosis), at 80 columns; skipped with a note without accelerate.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported
os.environ.setdefault("OMP_NUM_THREADS", "1")

import contextlib
import importlib.util
import inspect
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from graddoctor.cli import main  # noqa: E402
from graddoctor.integrations.autowatch import AutoWatch, scan_heap  # noqa: E402
from graddoctor.integrations.script import parse_command, run_command  # noqa: E402

OUT = ROOT / "docs" / "results"
SCRIPT = ["python", "examples/train_mlp.py", "--epochs", "4"]  # 88 optimizer steps
REPEATS = 5


def _quiet(fn):
    """Run fn with the script's prints and graddoctor's report swallowed; its wall time in seconds."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t


def overhead(tmp: Path) -> dict:
    """Seconds per variant (median of REPEATS, interleaved), the ratio to the plain script, and how much of
    the watched variants' time went into finding the models (a one-off heap scan, not a per-step cost)."""
    cmd = parse_command(SCRIPT)
    scans: dict[str, list[float]] = {}

    def watched(name, every):
        def go():
            with AutoWatch(every=every) as aw:
                run_command(cmd)
            scans.setdefault(name, []).append(aw.scan_seconds)
        return go

    counter = iter(range(10**6))
    variants = {
        "plain script": lambda: run_command(cmd),
        "hooks, --every 10": watched("hooks, --every 10", 10),
        "hooks, --every 1": watched("hooks, --every 1", 1),
        "graddoctor run (all: store, diagnosis, report)": lambda: main(
            ["run", "--store", str(tmp / f"runs-{next(counter)}.db"), "--", *SCRIPT]),
    }
    for fn in variants.values():  # warm-up: imports, first allocations
        _quiet(fn)
    scans.clear()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(REPEATS):
        for name, fn in variants.items():
            times[name].append(_quiet(fn))
    plain = statistics.median(times["plain script"])
    out = {}
    for name, ts in times.items():
        out[name] = {"median_s": statistics.median(ts), "ratio": statistics.median(ts) / plain, "runs": ts}
        if name in scans:
            scan = statistics.median(scans[name])
            out[name].update(scan_s=scan, ratio_without_scan=(statistics.median(ts) - scan) / plain)
    return out


def same_as_watch() -> dict:
    """The per-step cost of AutoWatch against graddoctor.watch() written into the same loop (the
    train_mlp model and batch size, 88 steps), the one-off heap scan taken out; interleaved medians."""
    sys.path.insert(0, str(ROOT / "examples"))
    from torch.nn import functional as F
    from train_mlp import make_model

    import graddoctor

    torch.manual_seed(0)
    batches = list(zip(torch.randn(64 * 88, 64).split(64), torch.randint(0, 10, (64 * 88,)).split(64)))

    def loop(model, opt, probe=None):
        for xb, yb in batches:
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if probe is not None:
                probe.step(loss)

    def fresh():
        model = make_model(16, 64)
        return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    scans: dict[str, list[float]] = {}

    def plain():
        loop(*fresh())

    def manual(every):
        def go():
            model, opt = fresh()
            with graddoctor.watch(model, optimizer=opt, every=every) as probe:
                loop(model, opt, probe)
        return go

    def auto(name, every):
        def go():
            model, opt = fresh()
            with AutoWatch(every=every) as aw:
                loop(model, opt)
            scans.setdefault(name, []).append(aw.scan_seconds)
        return go

    variants = {"plain loop": plain}
    for every in (1, 10):
        variants[f"watch(), every {every}"] = manual(every)
        variants[f"AutoWatch (run), every {every}"] = auto(f"AutoWatch (run), every {every}", every)
    for fn in variants.values():
        fn()
    scans.clear()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(REPEATS):
        for name, fn in variants.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    plain_s = statistics.median(times["plain loop"])
    return {name: {"median_s": statistics.median(ts) - statistics.median(scans.get(name, [0.0])),
                   "ratio": (statistics.median(ts) - statistics.median(scans.get(name, [0.0]))) / plain_s}
            for name, ts in times.items()}


def heap_scan() -> dict:
    """The cost of the one scan that maps an optimizer to its models, with big libraries imported."""
    import lightning.pytorch  # noqa: F401
    import transformers

    config = transformers.GPT2Config(vocab_size=256, n_positions=64, n_embd=64, n_layer=4, n_head=4)
    model = transformers.GPT2LMHeadModel(config)
    opt = torch.optim.AdamW(model.parameters())
    import gc

    times = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        modules, optimizers = scan_heap()
        times.append(time.perf_counter() - t)
    assert opt in optimizers and model in modules
    return {"median_s": statistics.median(times), "objects": len(gc.get_objects()), "modules": len(modules)}


def _show(cmd: list[str], cwd: Path = ROOT) -> str:
    """What a command prints at 80 columns (stdout, then stderr: graddoctor flushes the script's first)."""
    path = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "COLUMNS": "80", "PYTHONPATH": path, "HF_HUB_OFFLINE": "1",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}  # python: this one
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr}")
    return r.stdout + r.stderr


def mistakes() -> str:
    """The table: each mistake of examples/mistakes.py and the line `graddoctor check` prints."""
    spec = importlib.util.spec_from_file_location("mistakes", ROOT / "examples" / "mistakes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = ["| mistake (`examples/mistakes.py`) | what `graddoctor check` prints (exit status 2) |", "|---|---|"]
    here = os.getcwd()
    os.chdir(ROOT)
    try:
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            if fn.__module__ != "mistakes" or name in ("data", "dict_model", "tuple_model"):
                continue
            steps = "5" if name == "one_shot" else "2" if name == "bad_optimizer" else "0"
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = main(["check", f"examples/mistakes.py:{name}", "--steps", steps])
            line = err.getvalue().strip()
            assert code == 2 and "\n" not in line, (name, code, line)
            rows.append(f"| `{name}`: {inspect.getdoc(fn)} | `{line.replace('|', '/')}` |")
    finally:
        os.chdir(here)
    return "\n".join(rows) + "\n"


def markdown(cost: dict, scan: dict, same: dict) -> str:
    lines = [f"`python benchmarks/run.py`: `{' '.join(SCRIPT[1:])}` (88 optimizer steps) in one process, "
             f"{REPEATS} interleaved repeats each, medians (shared 2-core CPU machine, one thread).", "",
             "| variant | seconds | vs the plain script | of which finding the models | vs plain, without it |",
             "|---|---|---|---|---|"]
    for name, v in cost.items():
        found = f"{v['scan_s']:.2f} s" if "scan_s" in v else ""
        rest = f"{v['ratio_without_scan']:.2f}x" if "scan_s" in v else ""
        lines.append(f"| {name} | {v['median_s']:.2f} | {v['ratio']:.2f}x | {found} | {rest} |")
    lines += ["", "The same training loop with `graddoctor.watch()` written into it, and unchanged under "
                  "AutoWatch (what `run` uses), the heap scan taken out:", "",
              "| variant | seconds | vs the plain loop |", "|---|---|---|"]
    lines += [f"| {name} | {v['median_s']:.2f} | {v['ratio']:.2f}x |" for name, v in same.items()]
    lines += ["", f"Finding the models is one scan of the live objects (gc) per optimizer; with transformers and "
                  f"Lightning imported ({scan['objects']:,} objects, {scan['modules']} modules) it takes "
                  f"{scan['median_s']:.2f} s.", ""]
    return "\n".join(lines)


def run() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:  # a fresh directory: run 1, paths as a user sees them
        (OUT / "run-train_mlp.txt").write_text(_show(
            [py, "-m", "graddoctor", "run", "--", "python", str(ROOT / "examples" / "train_mlp.py")], Path(tmp)))
    (OUT / "check-digits_training.txt").write_text(_show([py, "-m", "graddoctor", "check",
                                                          "examples/models.py:digits_training", "--steps", "30"]))
    (OUT / "check-mistakes.md").write_text(mistakes())
    if importlib.util.find_spec("accelerate") is None:
        print("accelerate is not installed: docs/results/hf-callback.txt not written (pip install 'accelerate>=1.1')")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            (OUT / "hf-callback.txt").write_text(_show([py, str(ROOT / "examples" / "train_hf.py")], Path(tmp)))
    with tempfile.TemporaryDirectory() as tmp:
        cost = overhead(Path(tmp))
    same = same_as_watch()
    scan = heap_scan()
    (OUT / "run.json").write_text(json.dumps({"overhead": cost, "same_loop": same, "heap_scan": scan,
                                              "script": SCRIPT, "repeats": REPEATS}, indent=2))
    (OUT / "run.md").write_text(markdown(cost, scan, same))
    print((OUT / "run.md").read_text())


if __name__ == "__main__":
    run()
