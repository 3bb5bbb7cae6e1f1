"""Overhead of graddoctor.watch: time and peak memory of a plain training loop vs the same loop watched.

Workloads: the 20 x 256 tanh MLP (batch 128, SGD with momentum) and three real architectures
from `transformers` small configs at their default init, trained with AdamW: a ResNet
(basic blocks, BatchNorm), a GPT-2 decoder and a BERT encoder (6 layers, width 256). They are
wider than the zoo's test sizes (tests/zoo.py, width 64, 16 tokens), whose steps take a few
milliseconds of mostly per-op dispatch: there the probe's fixed cost per layer call (a Python
hook and a dozen small kernels) is measured too (--zoo), but a model worth monitoring spends
more than that per layer.

Time: variants run round-robin, interleaved in one process (this machine's noise drifts over
minutes), in a shuffled order each round (the position within a round biases a block by a few
per cent here). Each variant trains its own copy of the model (same seed) under a probe that stays
open all run; a block times STEPS consecutive steps of the same loop: forward, loss,
zero_grad, backward, optimizer.step(), float(loss) (the loop's one host sync, as in
graddoctor.train), and probe.step(loss) under watch(model, optimizer=opt). A block's time /
STEPS is one sample (so an `every=10` block holds its recorded step); reported: the median
ms/step, and the median over rounds of the ratio to the same round's plain block.
Threads: torch.set_num_threads(1) on CPU (the machine has 2 shared cores), timed with the
process's CPU time (time.process_time): on a machine shared with other jobs, wall time also
counts the waits for a core, which come and go independently of the variant.

Peak memory: one recorded step (the first after warm-up) per variant, one model at a time;
on CPU the bytes of every live tensor at the step's start plus the highest running sum of
the allocator's allocations and frees during the step (torch.profiler, profile_memory=True);
on CUDA torch.cuda.max_memory_allocated. Ratio to the plain step's peak.

    python benchmarks/overhead.py                   # CPU, all workloads; writes docs/results/overhead.*
    python benchmarks/overhead.py --device cuda     # the same on a GPU
    python benchmarks/overhead.py --profile mlp     # where the time of stats="full" goes, per phase
    python benchmarks/overhead.py --profile all     # every workload and preset -> docs/results/overhead-profile.*
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported: no spin-waiting
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import gc
import json
import platform
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import graddoctor

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
STEPS = 10  # steps per timed block: a multiple of 10, so every=10 blocks hold one recorded step
VARIANTS = {  # name -> watch() kwargs (None: the plain loop); the optimizer is bound
    "plain": None,
    "norms": {"stats": "norms"},
    "full": {"stats": "full"},
    "full every=10": {"stats": "full", "every": 10},
}
TARGETS = {"cpu": {"norms": 1.02, "full": 1.10, "full every=10": 1.02},  # issue 16, ratios to plain
           "cuda": {"full": 1.05}}
MEMORY_TARGET = 1.05  # the probe adds at most 5 % to the plain step's peak


@dataclass(frozen=True)
class Workload:
    """A model, its optimizer, a few fixed batches and its loss: one training recipe."""

    name: str
    summary: str
    make: Callable[[], nn.Module]  # same seed every call
    batches: Callable[[torch.Generator], list]
    loss: Callable[[nn.Module, object], Tensor]
    optimizer: Callable[[nn.Module], torch.optim.Optimizer]
    rounds: int  # timed blocks per variant


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)


def _adamw(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)


def _hf(model_cls: str, config_cls: str, **config) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        import transformers

        transformers.logging.set_verbosity_error()
        torch.manual_seed(0)
        return getattr(transformers, model_cls)(getattr(transformers, config_cls)(**config)).train()
    return make


def _tokens(batch: int, seq: int, vocab: int) -> Callable[[torch.Generator], list]:
    return lambda g: [torch.randint(4, vocab, (batch, seq), generator=g) for _ in range(4)]


def _lm_loss(model: nn.Module, ids: Tensor) -> Tensor:
    return model(input_ids=ids, labels=ids).loss


def _mlp() -> nn.Module:
    return graddoctor.build(graddoctor.NetSpec(kind="mlp", depth=20, width=256, activation="tanh",
                                               in_shape=(784,)), seed=0)


def _classify(model: nn.Module, batch: tuple) -> Tensor:
    x, y = batch
    out = model(x)
    return F.cross_entropy(out if isinstance(out, Tensor) else out.logits, y)


def _images(batch: int, shape: tuple) -> Callable[[torch.Generator], list]:
    return lambda g: [(torch.randn(batch, *shape, generator=g), torch.randint(0, 10, (batch,), generator=g))
                      for _ in range(4)]


VOCAB, SEQ = 1024, 32
WORKLOADS: dict[str, Workload] = {w.name: w for w in (
    Workload("mlp", "MLP 20 x 256 tanh, batch 128, SGD momentum", _mlp, _images(128, (784,)), _classify, _sgd, 30),
    Workload("resnet", "ResNet basic [2,2,2,2] x [32..256], BatchNorm, 32x32 images, batch 16, AdamW",
             _hf("ResNetForImageClassification", "ResNetConfig", layer_type="basic", depths=[2, 2, 2, 2],
                 hidden_sizes=[32, 64, 128, 256], embedding_size=32, num_labels=10),
             _images(16, (3, 32, 32)), _classify, _adamw, 10),
    Workload("gpt2", f"GPT-2 decoder, 6 layers x 256, 4 heads, {SEQ} tokens x 8, AdamW",
             _hf("GPT2LMHeadModel", "GPT2Config", n_embd=256, n_layer=6, n_head=4, vocab_size=VOCAB,
                 n_positions=SEQ), _tokens(8, SEQ, VOCAB), _lm_loss, _adamw, 10),
    Workload("bert", f"BERT encoder (MLM), 6 layers x 256, 4 heads, {SEQ} tokens x 8, AdamW",
             _hf("BertForMaskedLM", "BertConfig", hidden_size=256, num_hidden_layers=6, num_attention_heads=4,
                 intermediate_size=1024, vocab_size=VOCAB, max_position_embeddings=SEQ),
             _tokens(8, SEQ, VOCAB), _lm_loss, _adamw, 10),
)}


def _to(batch: object, device: str) -> object:
    if isinstance(batch, Tensor):
        return batch.to(device)
    return tuple(_to(b, device) for b in batch)


def setup(w: Workload, device: str) -> tuple[nn.Module, torch.optim.Optimizer, list]:
    """The workload's model (same seed every time), its optimizer and its fixed batches."""
    model = w.make().to(device)
    return model, w.optimizer(model), [_to(b, device) for b in w.batches(torch.Generator().manual_seed(0))]


def train_step(w: Workload, model: nn.Module, opt: torch.optim.Optimizer, batch: object, probe) -> Tensor:
    """One step of the loop every variant runs (the probe's step, when watched)."""
    loss = w.loss(model, batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    float(loss.detach())  # the loop's own host sync, as in graddoctor.train
    if probe is not None:
        probe.step(loss)
    return loss


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def clock(device: str) -> Callable[[], float]:
    """The clock a block is timed with: on CPU the process's own CPU time (one thread: the step's
    time, without the waits for cores that other jobs on a shared machine cause); on a GPU wall time."""
    return time.process_time if device == "cpu" else time.perf_counter


def block(w: Workload, model: nn.Module, opt: torch.optim.Optimizer, data: list, probe, device: str) -> float:
    """ms/step over one block of STEPS training steps."""
    now = clock(device)
    _sync(device)
    t0 = now()
    for i in range(STEPS):
        train_step(w, model, opt, data[i % len(data)], probe)
    _sync(device)
    return (now() - t0) * 1e3 / STEPS


def timing(w: Workload, device: str, rounds: int | None = None,
           variants: dict | None = None) -> tuple[dict[str, float], dict[str, float]]:
    """(median ms/step, median ratio to the plain block of the same round) per variant."""
    variants = variants or VARIANTS
    setups = {}
    for variant, kwargs in variants.items():
        model, opt, data = setup(w, device)
        # watch() kwargs, or a callable(model, opt) -> an object with step(loss) and close() (probe_floor.py)
        probe = None if kwargs is None else kwargs(model, opt) if callable(kwargs) else \
            graddoctor.watch(model, optimizer=opt, **kwargs)
        setups[variant] = (model, opt, data, probe)
    samples: dict[str, list[float]] = {v: [] for v in variants}
    try:
        for v in variants:  # warm-up: allocator, kernels, first-call paths, layer discovery
            block(w, *setups[v], device)
        order = list(variants)
        shuffle = random.Random(0).shuffle
        for _ in range(rounds or w.rounds):
            shuffle(order)  # no variant always runs first (or right after the same one)
            for v in order:
                samples[v].append(block(w, *setups[v], device))
    finally:
        for *_, probe in setups.values():
            if probe is not None:
                probe.close()
    ratios = {v: statistics.median(a / b for a, b in zip(s, samples["plain"])) for v, s in samples.items()}
    return {v: statistics.median(s) for v, s in samples.items()}, ratios


def live_tensor_bytes() -> int:
    """Bytes of every distinct tensor storage alive in the process (CPU)."""
    seen: dict[int, int] = {}
    for obj in gc.get_objects():
        try:
            if isinstance(obj, Tensor) and obj.device.type == "cpu" and not obj.is_sparse:
                s = obj.untyped_storage()
                seen[s.data_ptr()] = s.nbytes()
        except (RuntimeError, NotImplementedError):
            continue
    return sum(seen.values())


def step_peak(fn: Callable[[], object], device: str) -> int:
    """Peak bytes allocated while `fn` runs (tensors alive at its start included)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    from torch.profiler import ProfilerActivity, profile

    gc.collect()
    start = live_tensor_bytes()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    running = peak = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        running += e.self_cpu_memory_usage  # allocations inside an op, frees as "[memory]" events
        peak = max(peak, running)
    return start + peak


def _peak_of(w: Workload, kwargs: dict | None, device: str) -> int:
    model, opt, data = setup(w, device)
    probe = None if kwargs is None else graddoctor.watch(model, optimizer=opt, **kwargs)
    try:
        for i in range(STEPS):  # warm-up, and the every=10 variant's next step is a recorded one
            train_step(w, model, opt, data[i % len(data)], probe)
        opt.zero_grad(set_to_none=True)  # every variant starts the step with the same tensors alive
        return step_peak(lambda: train_step(w, model, opt, data[0], probe), device)
    finally:
        if probe is not None:
            probe.close()


def memory(w: Workload, device: str) -> dict[str, float]:
    """Peak bytes of one recorded training step per variant (one model alive at a time)."""
    out = {}
    for variant, kwargs in VARIANTS.items():
        out[variant] = _peak_of(w, kwargs, device)
        gc.collect()
    return out


# -- where the time goes ---------------------------------------------------------------------
PHASES = (  # (class, method, what it does): the probe's work, timed in place, each exclusive of the others
    ("Probe", "_on_forward", "forward hooks: input/output statistics"),
    ("StepRecord", "signal_all", "tensor hooks: error-signal norms"),
    ("StepRecord", "_end_backward", "end of backward: file the norms"),
    ("StepRecord", "params", "gradient norms (one pass over the gradients)"),
    ("Probe", "_before_update", "optimizer pre-hook: weight sample copy + weight norms"),
    ("Probe", "_after_update", "optimizer post-hook: update norms, end of step"),
    ("Pipeline", "ship", "end of a recorded step: parts, the one host copy"),
    ("Checks", "_on_input", "every step: input check"),
    ("Checks", "grads", "every step: gradient check (unrecorded steps: one pass over the gradients)"),
    ("Pipeline", "pool", "pooling into the Trace (every 64 steps)"),
)
PROFILES = {"full": {"stats": "full"}, "norms": {"stats": "norms"}, "full every=10": {"stats": "full", "every": 10}}


def _dispatches(w: Workload, model: nn.Module, opt: torch.optim.Optimizer, data: list, probe, steps: int) -> float:
    """aten ops dispatched from Python per step (top-level: an op's own sub-ops not counted)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(steps):
            train_step(w, model, opt, data[i % len(data)], probe)
    top = [e for e in prof.events() if e.name.startswith("aten::")
           and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))]
    return len(top) / steps


def profile(name: str, device: str, kwargs: dict, blocks: int = 6) -> dict:
    """Where the probe's time goes on one workload: ms per step in each phase (exclusive), next to the
    plain step; aten ops the probe adds per step and per recorded layer call."""
    import collections

    from graddoctor.probe import checks, collect, pipeline
    from graddoctor.probe import probe as probe_mod

    classes = {"Probe": probe_mod.Probe, "StepRecord": collect.StepRecord, "Checks": checks.Checks,
               "Pipeline": pipeline.Pipeline}
    now = clock(device)
    spent: dict[str, float] = collections.defaultdict(float)
    calls: dict[str, int] = collections.defaultdict(int)
    stack: list[list[float]] = []  # per running phase: time spent in phases nested inside it
    originals = []
    for cls_name, method, _ in PHASES:
        cls = classes[cls_name]
        fn = getattr(cls, method)
        originals.append((cls, method, fn))

        def timed(*args, _fn=fn, _key=f"{cls_name}.{method}", **kw):
            stack.append([0.0])
            t = now()
            try:
                return _fn(*args, **kw)
            finally:
                total = now() - t
                nested = stack.pop()[0]
                spent[_key] += total - nested
                calls[_key] += 1
                if stack:
                    stack[-1][0] += total
        setattr(cls, method, timed)
    w = WORKLOADS[name]
    try:
        model, opt, data = setup(w, device)
        block(w, model, opt, data, None, device)
        plain = [block(w, model, opt, data, None, device) for _ in range(blocks)]
        plain_ops = _dispatches(w, model, opt, data, None, STEPS)
        with graddoctor.watch(model, optimizer=opt, **kwargs) as probe:
            block(w, model, opt, data, probe, device)
            spent.clear()
            calls.clear()
            watched = [block(w, model, opt, data, probe, device) for _ in range(blocks)]
    finally:
        for cls, method, fn in originals:
            setattr(cls, method, fn)
    with graddoctor.watch(model, optimizer=opt, **kwargs) as probe:  # the op count, untimed
        block(w, model, opt, data, probe, device)
        ops = _dispatches(w, model, opt, data, probe, STEPS) - plain_ops
    n = blocks * STEPS
    layer_calls = calls.get("Probe._on_forward", 0) / n
    per_call = ops / layer_calls if layer_calls and kwargs.get("every", 1) == 1 else None
    phases = {f"{c}.{m}": {"ms": spent.get(f"{c}.{m}", 0.0) * 1e3 / n, "calls": calls.get(f"{c}.{m}", 0) / n,
                           "what": what} for c, m, what in PHASES}
    return {"plain_ms": statistics.median(plain), "watched_ms": statistics.median(watched),
            "probe_ms": sum(p["ms"] for p in phases.values()), "phases": phases,
            "extra_ops_per_step": ops, "layer_calls_per_step": layer_calls,
            "ops_per_layer_call": per_call}


def print_profile(name: str, label: str, r: dict) -> None:
    """One profile on the terminal."""
    print(f"{name}, {label}: plain {r['plain_ms']:.2f} ms/step, watched {r['watched_ms']:.2f} ms/step "
          f"(medians over blocks); the probe's phases {r['probe_ms']:.2f} ms/step; "
          f"{r['extra_ops_per_step']:.0f} more aten ops per step"
          + (f", {r['ops_per_layer_call']:.1f} per recorded layer call" if r["ops_per_layer_call"] else ""))
    for key, p in r["phases"].items():
        print(f"  {p['ms']:7.3f} ms/step  {p['calls']:5.1f} calls/step  {key}: {p['what']}")


def write_profile(results: dict, device: str) -> list[Path]:
    """docs/results/overhead-profile.json (+ .md: ms per step in each phase, per workload and preset)."""
    suffix = "" if device == "cpu" else f"-{device}"
    js = RESULTS / f"overhead-profile{suffix}.json"
    js.write_text(json.dumps(results, indent=1) + "\n")
    keys = [f"{c}.{m}" for c, m, _ in PHASES]
    lines = [f"Where the probe's time goes ({results['machine']}; {results['clock']}; {results['load']}): "
             "ms per training step in each phase of the probe, each exclusive of the others (medians of "
             f"blocks of {STEPS} steps; the phases' sum is the probe's own time), and the aten ops the probe "
             f"dispatches per step beyond the plain loop. Command: `{results['command']}`.", "",
             "| workload | preset | plain ms/step | watched ms/step | probe ms/step | "
             + " | ".join(f"`{k.split('.')[1]}`" for k in keys) + " | aten ops/step (per layer call) |",
             "|---|---|---|---|---|" + "---|" * len(keys) + "---|"]
    for name, presets in results["workloads"].items():
        for label, r in presets.items():
            per = f" ({r['ops_per_layer_call']:.0f})" if r["ops_per_layer_call"] else ""
            lines.append(f"| {name} | {label} | {r['plain_ms']:.1f} | {r['watched_ms']:.1f} | {r['probe_ms']:.2f} | "
                         + " | ".join(f"{r['phases'][k]['ms']:.2f}" for k in keys)
                         + f" | {r['extra_ops_per_step']:.0f}{per} |")
    lines += ["", "Phases: " + "; ".join(f"`{k.split('.')[1]}`: {what}" for k, (_, _, what) in zip(keys, PHASES)) + "."]
    md = RESULTS / f"overhead-profile{suffix}.md"
    md.write_text("\n".join(lines) + "\n")
    return [js, md]


# -- results ---------------------------------------------------------------------------------
def write_results(results: dict, device: str) -> list[Path]:
    """docs/results/overhead.json (+ overhead.md: the tables the docs include)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "" if device == "cpu" else f"-{device}"
    js = RESULTS / f"overhead{suffix}.json"
    js.write_text(json.dumps(results, indent=1) + "\n")
    targets = TARGETS.get(device, {})
    lines = [f"Time per training step under `watch()` vs the plain loop ({results['machine']}; {clock_name(device)}; "
             f"{results['load']}); "
             "ratio = median over interleaved rounds, in shuffled order, of (variant block / plain block of the "
             "same round). "
             f"Peak memory: one recorded step, ratio to the plain step's peak. Command: `{results['command']}`.",
             "", "| workload | plain ms/step | " + " | ".join(v for v in VARIANTS if v != "plain") + " | peak memory "
             + " / ".join(v for v in VARIANTS if v != "plain") + " |",
             "|---|---|" + "---|" * (len(VARIANTS) - 1) + "---|"]
    for r in results["workloads"].values():
        cells = []
        for v in VARIANTS:
            if v == "plain":
                continue
            t = targets.get(v)
            mark = "" if t is None else (" ✓" if r["ratio"][v] <= t else f" ✗ (target {t:.2f})")
            cells.append(f"{r['ratio'][v]:.3f}x{mark}")
        mem = " / ".join(f"{r['memory_ratio'][v]:.3f}x" for v in VARIANTS if v != "plain") if r.get("memory_ratio") \
            else "-"
        lines.append(f"| {r['summary']} | {r['ms']['plain']:.1f} | " + " | ".join(cells) + f" | {mem} |")
    md = RESULTS / f"overhead{suffix}.md"
    md.write_text("\n".join(lines) + "\n")
    return [js, md]


def _machine(device: str) -> str:
    return (f"{platform.machine()} {os.cpu_count()} cores (shared), 1 thread" if device == "cpu"
            else torch.cuda.get_device_name())


def clock_name(device: str) -> str:
    """What a block's time is (see clock())."""
    return "CPU time of the training process" if device == "cpu" else "wall time"


def main() -> None:
    """Run the benchmark, print the ratios and write the results files."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu | cuda (default: cpu)")
    p.add_argument("--models", default=",".join(WORKLOADS), help=f"comma-separated: {', '.join(WORKLOADS)}")
    p.add_argument("--rounds", type=int, default=None, help="blocks per variant (default: per workload)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--profile", default=None, metavar="MODEL",
                   help="where the time goes, on this workload (all: every workload and preset, written to "
                        "docs/results/overhead-profile.*)")
    p.add_argument("--load", default="machine load not stated",
                   help="a note on what else ran on the machine, for the results header")
    p.add_argument("--stats", default="full", help="the preset --profile looks at (default: full)")
    p.add_argument("--every", type=int, default=1, help="the every --profile looks at (default: 1)")
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/results alone")
    args = p.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(1)
    if args.profile:
        names = list(WORKLOADS) if args.profile == "all" else args.profile.split(",")
        label = args.stats + (f" every={args.every}" if args.every > 1 else "")
        presets = PROFILES if args.profile == "all" else {label: {"stats": args.stats, "every": args.every}}
        out = {"machine": _machine(args.device), "clock": clock_name(args.device), "load": args.load,
               "command": "python benchmarks/overhead.py --profile all", "workloads": {}}
        for name in names:
            out["workloads"][name] = {}
            for label, kwargs in presets.items():
                r = out["workloads"][name][label] = profile(name, args.device, kwargs)
                print_profile(name, label, r)
        if args.profile == "all" and not args.no_write:
            for path in write_profile(out, args.device):
                print(f"wrote {path}")
        return
    machine = _machine(args.device)
    print(f"torch {torch.__version__}, device {args.device}, {machine}, {STEPS} steps per block")
    command = "python benchmarks/overhead.py" + ("" if args.device == "cpu" else f" --device {args.device}")
    results: dict = {"machine": machine, "torch": torch.__version__, "device": args.device, "command": command,
                     "load": args.load,
                     "steps_per_block": STEPS, "targets": TARGETS.get(args.device, {}),
                     "memory_target": MEMORY_TARGET, "workloads": {}}
    targets = TARGETS.get(args.device, {})
    for name in args.models.split(","):
        w = WORKLOADS[name]
        t0 = time.perf_counter()
        med, ratios = timing(w, args.device, args.rounds)
        peaks = {} if args.no_memory else memory(w, args.device)
        r = {"summary": w.summary, "ms": med, "ratio": ratios, "peak_bytes": peaks,
             "memory_ratio": {v: peaks[v] / peaks["plain"] for v in peaks}, "seconds": time.perf_counter() - t0}
        results["workloads"][name] = r
        print(f"\n{name}: {w.summary}  ({r['seconds']:.0f} s)")
        for variant, ms in med.items():
            target = targets.get(variant)
            ok = target is not None and ratios[variant] <= target
            verdict = "" if target is None else f"  target <= {target:.2f}x  {'ok' if ok else 'MISSED'}"
            mem = f"  peak memory {r['memory_ratio'][variant]:.3f}x" if peaks else ""
            print(f"  {variant:<16} {ms:8.2f} ms/step  {ratios[variant]:5.3f}x{verdict}{mem}")
    print("\nratio: median over rounds of (variant block / plain block of the same round)")
    if not args.no_write:
        for path in write_results(results, args.device):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
