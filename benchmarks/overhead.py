"""Overhead of graddoctor.watch: median ms/step of a plain training loop vs the same loop watched.

Variants run round-robin, interleaved in one process (this machine's noise drifts over
minutes). Each variant trains its own copy of the model (same seed) under a probe that stays
open all run; a block times STEPS consecutive steps of the same loop: forward, loss,
zero_grad, backward, optimizer.step(), float(loss) (the loop's one host sync, as in
graddoctor.train), and probe.step(loss) under watch(model, optimizer=opt). A block's time
/ STEPS is one sample (so an `every=10` block holds its recorded step); reported: the
median ms/step, and the median over rounds of the ratio to the same round's plain block.
Threads: torch.set_num_threads(1) on CPU (the machine has 2 shared cores).

    python benchmarks/overhead.py                 # CPU, both models (< 3 min on 2 cores)
    python benchmarks/overhead.py --device cuda   # the same on a GPU
    python benchmarks/overhead.py --profile mlp   # where the time of stats="full" goes, per phase
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported: no spin-waiting

import argparse
import statistics
import time

import torch
from torch.nn import functional as F

import graddoctor

STEPS = 10  # steps per timed block: a multiple of 10, so every=10 blocks hold one recorded step
VARIANTS = {  # name -> watch() kwargs (None: the plain loop); the optimizer is bound unless said
    "plain": None,
    "norms": {"stats": "norms"},
    "full": {"stats": "full"},
    "full every=10": {"stats": "full", "every": 10},
    "norms, no optimizer": {"stats": "norms", "optimizer": None},  # for the profile: no update ratios
}
TARGETS = {"norms": 1.03, "full": 1.15, "full every=10": 1.02}  # issue 3, ratios to plain, CPU
MODELS = {  # name -> (NetSpec, batch size, rounds)
    "mlp": (graddoctor.NetSpec(kind="mlp", depth=20, width=256, activation="tanh", in_shape=(784,)), 128, 30),
    "cnn": (graddoctor.NetSpec(kind="cnn", depth=4, width=32, activation="relu", in_shape=(1, 28, 28)), 64, 10),
}


def make(name: str, device: str) -> tuple[torch.nn.Module, torch.optim.Optimizer, list]:
    """The model (same seed every time), its optimizer and a few fixed random batches."""
    spec, batch, _ = MODELS[name]
    model = graddoctor.build(spec, seed=0).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    data = [(torch.randn(batch, *spec.in_shape, generator=gen).to(device),
             torch.randint(0, 10, (batch,), generator=gen).to(device)) for _ in range(4)]
    return model, opt, data


def block(model: torch.nn.Module, opt: torch.optim.Optimizer, data: list, probe, device: str) -> float:
    """ms/step over one block of STEPS training steps."""
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(STEPS):
        x, y = data[i % len(data)]
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        float(loss.detach())
        if probe is not None:
            probe.step(loss)
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3 / STEPS


def run(name: str, device: str, rounds: int | None = None) -> tuple[dict[str, float], dict[str, float]]:
    """(median ms/step, median ratio to the plain block of the same round) per variant.

    Each variant trains its own copy of the model under one probe that stays open for the
    whole run (as in real use); the variants' blocks take turns, round after round.
    """
    setups = {}
    for variant, kwargs in VARIANTS.items():
        model, opt, data = make(name, device)
        probe = None if kwargs is None else graddoctor.watch(model, **{"optimizer": opt, **kwargs})
        setups[variant] = (model, opt, data, probe)
    samples: dict[str, list[float]] = {v: [] for v in VARIANTS}
    try:
        for v in VARIANTS:  # warm-up: allocator, kernels, first-call paths, layer discovery
            block(*setups[v], device)
        for _ in range(rounds or MODELS[name][2]):
            for v in VARIANTS:
                samples[v].append(block(*setups[v], device))
    finally:
        for *_, probe in setups.values():
            if probe is not None:
                probe.close()
    ratios = {v: statistics.median(a / b for a, b in zip(s, samples["plain"])) for v, s in samples.items()}
    return {v: statistics.median(s) for v, s in samples.items()}, ratios


PHASES = (  # (class, method, what it does): the probe's work, timed in place
    ("Probe", "_on_forward", "forward hooks: input/output statistics"),
    ("StepRecord", "signal", "tensor hooks: error-signal norms"),
    ("StepRecord", "_end_backward", "end of backward: file the norms"),
    ("StepRecord", "params", "gradient norms (+ weight norms without optimizer)"),
    ("Probe", "_before_update", "optimizer pre-hook: params + weight copy + weight norms"),
    ("Probe", "_after_update", "optimizer post-hook: update norms + end of step"),
    ("Probe", "_finish", "end of step: the one host copy"),
    ("Probe", "_pool", "pooling into the Trace (every 64 steps)"),
)


def profile(name: str, device: str, stats: str = "full", steps: int = 60) -> None:
    """Print where the probe's time goes: ms per step in each phase, next to the plain step."""
    import collections

    from graddoctor.probe import collect
    from graddoctor.probe import probe as probe_mod

    classes = {"Probe": probe_mod.Probe, "StepRecord": collect.StepRecord}
    spent: dict[str, list[float]] = collections.defaultdict(list)
    originals = []
    for cls_name, method, _ in PHASES:
        cls = classes[cls_name]
        fn = getattr(cls, method)
        originals.append((cls, method, fn))

        def timed(*args, _fn=fn, _key=f"{cls_name}.{method}", **kwargs):
            t = time.perf_counter()
            try:
                return _fn(*args, **kwargs)
            finally:
                spent[_key].append(time.perf_counter() - t)
        setattr(cls, method, timed)
    try:
        model, opt, data = make(name, device)
        plain = [block(model, opt, data, None, device) for _ in range(steps // STEPS)]
        with graddoctor.watch(model, optimizer=opt, stats=stats) as probe:
            block(model, opt, data, probe, device)
            spent.clear()
            watched = [block(model, opt, data, probe, device) for _ in range(steps // STEPS)]
    finally:
        for cls, method, fn in originals:
            setattr(cls, method, fn)
    n = steps // STEPS * STEPS
    print(f"{name}, stats={stats!r}: plain {statistics.median(plain):.2f} ms/step, "
          f"watched {statistics.median(watched):.2f} ms/step (medians over blocks)")
    for cls_name, method, what in PHASES:
        t = spent.get(f"{cls_name}.{method}", [])
        print(f"  {sum(t) * 1e3 / n:7.3f} ms/step  {len(t) / n:5.1f} calls/step  {cls_name}.{method}: {what}")
    print("  (nested: _before_update includes params; _after_update includes _finish, which includes"
          " the host copy)")


def main() -> None:
    """Run the benchmark and print the ratios."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu | cuda (default: cpu)")
    p.add_argument("--models", default="mlp,cnn", help="comma-separated: mlp, cnn")
    p.add_argument("--rounds", type=int, default=None, help="blocks per variant (default: per model)")
    p.add_argument("--profile", default=None, metavar="MODEL", help="where the time goes, on this model")
    p.add_argument("--stats", default="full", help="the preset --profile looks at (default: full)")
    args = p.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(1)
    if args.profile:
        profile(args.profile, args.device, args.stats)
        return
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
          f"{STEPS} steps per block")
    for name in args.models.split(","):
        t0 = time.perf_counter()
        med, ratios = run(name, args.device, args.rounds)
        spec, batch, _ = MODELS[name]
        print(f"\n{name}: {spec.summary()}, batch {batch}  ({time.perf_counter() - t0:.0f} s)")
        for variant, ms in med.items():
            target = TARGETS.get(variant) if args.device == "cpu" else None
            ok = "ok" if target is not None and ratios[variant] <= target else "MISSED"
            verdict = "" if target is None else f"  target <= {target:.2f}x  {ok}"
            print(f"  {variant:<20} {ms:8.2f} ms/step  {ratios[variant]:5.3f}x{verdict}")
    print("\nratio: median over rounds of (variant block / plain block of the same round)")


if __name__ == "__main__":
    main()
