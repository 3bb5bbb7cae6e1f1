"""graddoctor's probe beside what people use today to watch gradients: time per training step.

For each workload of benchmarks/overhead.py (the 20 x 256 tanh MLP and three real
architectures from `transformers`), in one run, ratio to the plain loop of the same round:

- graddoctor `watch(stats="norms")`, `watch(stats="full")`, `watch(stats="full", every=10)`;
- Lightning's `grad_norm(module, 2)` after each backward (lightning.pytorch.utilities, as its
  docs suggest in `on_before_optimizer_step`);
- naive per-module full-backward hooks that take `grad_output[0].norm().item()` (the output
  gradient's norm, one host sync per layer);
- W&B `wandb.watch(model, log="gradients", log_freq=1 | 100)`, offline (W&B allows one watched
  run per process: each log_freq runs in its own process, interleaved with a plain loop there);
- TensorBoard: `SummaryWriter.add_histogram` of every parameter's gradient, every step.

Each peer is optional: one that is not installed is skipped with a note in the table.
Interleaved blocks of STEPS steps, one thread, medians; results in docs/results/peers.{json,md}.

    python benchmarks/peers.py                  # all workloads (a few minutes on 2 cores)
    python benchmarks/peers.py --models mlp     # one
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported: no spin-waiting
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import argparse
import importlib.util
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead as bench

import graddoctor

ROUNDS = {"mlp": 15, "resnet": 6, "gpt2": 5, "bert": 5}  # timed blocks per variant


class Peer:
    """A way of watching gradients: attach to a model, do its work each step, detach."""

    name = ""
    requires: tuple[str, ...] = ()  # importable modules it needs

    def available(self) -> str | None:
        """None if it can run here, else why not."""
        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        return f"not installed ({', '.join(missing)})" if missing else None

    def attach(self, model: nn.Module, opt: torch.optim.Optimizer) -> None:
        """Start watching."""

    def after_backward(self, model: nn.Module) -> None:
        """Called between backward and optimizer.step() (where gradient loggers run)."""

    def after_step(self, loss: torch.Tensor) -> None:
        """Called at the end of the step."""

    def close(self) -> None:
        """Stop watching, remove hooks."""


class Plain(Peer):
    name = "plain"


class GradDoctor(Peer):
    def __init__(self, name: str, **kwargs) -> None:
        self.name, self.kwargs, self.probe = name, kwargs, None

    def attach(self, model, opt):
        self.probe = graddoctor.watch(model, optimizer=opt, **self.kwargs)

    def after_step(self, loss):
        self.probe.step(loss)

    def close(self):
        self.probe.close()


class LightningGradNorm(Peer):
    name = "Lightning grad_norm"
    requires = ("lightning",)

    def after_backward(self, model):
        from lightning.pytorch.utilities import grad_norm

        self.last = grad_norm(model, norm_type=2)


class NaiveHooks(Peer):
    name = "naive backward hooks + .item()"

    def attach(self, model, opt):
        self.norms: list[float] = []

        def hook(module, grad_input, grad_output):
            if grad_output and grad_output[0] is not None:
                self.norms.append(grad_output[0].norm().item())

        self.handles = [m.register_full_backward_hook(hook) for m in model.modules()
                        if any(True for _ in m.parameters(recurse=False))]

    def after_step(self, loss):
        self.norms.clear()

    def close(self):
        for h in self.handles:
            h.remove()


class TensorBoardHistograms(Peer):
    name = "TensorBoard histograms"
    requires = ("tensorboard",)

    def attach(self, model, opt):
        from torch.utils.tensorboard import SummaryWriter

        self.dir = tempfile.TemporaryDirectory()
        self.writer, self.step = SummaryWriter(self.dir.name), 0
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def after_backward(self, model):
        for name, p in self.named:
            if p.grad is not None:
                self.writer.add_histogram(f"grad/{name}", p.grad, self.step)
        self.step += 1

    def close(self):
        self.writer.close()
        self.dir.cleanup()


class WandbWatch(Peer):
    requires = ("wandb",)

    def __init__(self, log_freq: int) -> None:
        self.log_freq, self.name = log_freq, f"W&B watch, log_freq={log_freq}"

    def attach(self, model, opt):
        import wandb

        self.dir = tempfile.TemporaryDirectory()
        self.run = wandb.init(mode="offline", dir=self.dir.name, project="graddoctor-peers")
        wandb.watch(model, log="gradients", log_freq=self.log_freq)

    def after_step(self, loss):
        self.run.log({"loss": float(loss.detach())})  # W&B's hooks log with the run's own log calls

    def close(self):
        self.run.finish()
        self.dir.cleanup()


IN_PROCESS: tuple[Callable[[], Peer], ...] = (
    Plain, lambda: GradDoctor("graddoctor norms", stats="norms"), lambda: GradDoctor("graddoctor full"),
    lambda: GradDoctor("graddoctor full every=10", every=10), LightningGradNorm, NaiveHooks,
    TensorBoardHistograms)
OWN_PROCESS = (1, 100)  # W&B log_freq values, one process each


def step(w: bench.Workload, model, opt, batch, peer: Peer) -> None:
    """One training step of the workload with `peer` watching."""
    loss = w.loss(model, batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    peer.after_backward(model)
    opt.step()
    float(loss.detach())
    peer.after_step(loss)


def block(w, model, opt, data, peer) -> float:
    """ms/step over one block of bench.STEPS steps (the process's CPU time, as in overhead.py)."""
    now = bench.clock("cpu")
    t0 = now()
    for i in range(bench.STEPS):
        step(w, model, opt, data[i % len(data)], peer)
    return (now() - t0) * 1e3 / bench.STEPS


def compare(w: bench.Workload, peers: list[Peer], rounds: int, failed: dict | None = None) -> dict[str, dict]:
    """Interleaved blocks of every peer (each on its own copy of the model); ratios to `plain`.

    A peer that raises on this workload (e.g. full-backward hooks before an in-place op) is
    dropped from it, with the reason in `failed`.
    """
    runs = []
    for peer in peers:
        model, opt, data = bench.setup(w, "cpu")
        peer.attach(model, opt)
        runs.append((peer, model, opt, data))
    samples: dict[str, list[float]] = {p.name: [] for p in peers}

    def timed(run) -> float | None:
        peer, model, opt, data = run
        try:
            return block(w, model, opt, data, peer)
        except Exception as exc:  # a peer's failure is a result: reported, not raised
            if failed is not None:
                failed[f"{peer.name} on {w.name}"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            runs.remove(run)
            samples.pop(peer.name)
            peer.close()
            return None

    try:
        for run in list(runs):  # warm-up
            timed(run)
        shuffle = random.Random(0).shuffle
        for _ in range(rounds):
            order = list(runs)
            shuffle(order)  # no peer always runs first (or right after the same one)
            for run in order:
                t = timed(run)
                if t is not None:
                    samples[run[0].name].append(t)
    finally:
        for peer, *_ in runs:
            peer.close()
    plain = samples["plain"]
    return {name: {"ms": statistics.median(s), "ratio": statistics.median(a / b for a, b in zip(s, plain))}
            for name, s in samples.items()}


def own_process(name: str, log_freq: int, rounds: int) -> dict:
    """One W&B variant in a fresh process (one watched run per process), against a plain loop there."""
    cmd = [sys.executable, __file__, "--worker-wandb", str(log_freq), "--models", name, "--rounds", str(rounds)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def versions() -> dict[str, str]:
    """Installed versions of the peers (those that are installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("lightning", "tensorboard", "wandb"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return out


def write_results(results: dict) -> list[Path]:
    """docs/results/peers.json and peers.md (rows: ways of watching; columns: workloads)."""
    bench.RESULTS.mkdir(parents=True, exist_ok=True)
    js, md = bench.RESULTS / "peers.json", bench.RESULTS / "peers.md"
    js.write_text(json.dumps(results, indent=1) + "\n")
    names = list(results["workloads"])
    rows = list(dict.fromkeys(v for r in results["workloads"].values() for v in r["variants"]))
    lines = [f"Time per training step, ratio to the plain loop of the same round ({results['machine']}; "
             f"{results.get('load', 'machine load not stated')}; "
             f"`{results['command']}`). Workloads as in the overhead table: "
             + "; ".join(f"**{n}**: {results['workloads'][n]['summary']} "
                         f"({results['workloads'][n]['variants']['plain']['ms']:.0f} ms/step plain)" for n in names)
             + ". Peers: " + ", ".join(f"{k} {v}" for k, v in results.get("versions", {}).items())
             + ". W&B runs part of its work in its own service process, which this CPU time does not count.",
             "", "| way of watching | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for row in rows:
        if row == "plain":
            continue
        cells = []
        for n in names:
            v = results["workloads"][n]["variants"].get(row)
            cells.append("-" if v is None else f"{v['ratio']:.2f}x")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    if results["skipped"]:
        lines += ["", "Not measured: " + "; ".join(f"{k} ({v})" for k, v in results["skipped"].items()) + "."]
    md.write_text("\n".join(lines) + "\n")
    return [js, md]


def main() -> None:
    """Run every available peer on every workload, print and write the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(bench.WORKLOADS), help=f"comma-separated: {', '.join(bench.WORKLOADS)}")
    p.add_argument("--rounds", type=int, default=None, help="blocks per variant (default: per workload)")
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/results alone")
    p.add_argument("--load", default="machine load not stated",
                   help="a note on what else ran on the machine, for the results header")
    p.add_argument("--worker-wandb", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(1)
    names = args.models.split(",")
    if args.worker_wandb is not None:  # child process: plain vs one W&B log_freq
        w = bench.WORKLOADS[names[0]]
        r = compare(w, [Plain(), WandbWatch(args.worker_wandb)], args.rounds or ROUNDS[w.name])
        print(json.dumps(r))
        return
    machine = f"CPU, {os.cpu_count()} cores (shared), 1 thread, torch {torch.__version__}"
    results: dict = {"machine": machine, "command": "python benchmarks/peers.py", "load": args.load,
                     "workloads": {}, "skipped": {},
                     "versions": versions()}
    peers = [make() for make in IN_PROCESS]
    for peer in peers:
        why = peer.available()
        if why:
            results["skipped"][peer.name] = why
    wandb_missing = WandbWatch(1).available()
    if wandb_missing:
        results["skipped"]["W&B watch"] = wandb_missing + "; `pip install wandb` to include it"
    for name in names:
        w = bench.WORKLOADS[name]
        rounds = args.rounds or ROUNDS[name]
        t0 = time.perf_counter()
        present = [make() for make in IN_PROCESS]
        variants = compare(w, [peer for peer in present if peer.available() is None], rounds, results["skipped"])
        if not wandb_missing:
            for freq in OWN_PROCESS:
                try:
                    r = own_process(name, freq, rounds)
                    variants[f"W&B watch, log_freq={freq}"] = r[f"W&B watch, log_freq={freq}"]
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    results["skipped"][f"W&B log_freq={freq} on {name}"] = str(exc)
        results["workloads"][name] = {"summary": w.summary, "variants": variants, "rounds": rounds,
                                      "seconds": time.perf_counter() - t0}
        print(f"\n{name}: {w.summary}  ({time.perf_counter() - t0:.0f} s)")
        for v, r in variants.items():
            print(f"  {v:<32} {r['ms']:8.2f} ms/step  {r['ratio']:5.2f}x")
    for k, v in results["skipped"].items():
        print(f"skipped {k}: {v}")
    if not args.no_write:
        for path in write_results(results):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
