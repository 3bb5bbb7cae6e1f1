"""What the probe's cost is made of: the hooks alone, one read of the gradients, and fused statistics.

Two measurements behind docs/measure.md's "where the time goes" (issue 16), on the MLP and the
GPT-2 workloads of benchmarks/overhead.py (same loop, same interleaved rounds, CPU time, one
thread, medians of ratios to the same round's plain block):

1. Floors, beside `watch()`'s presets:
   - "hooks only": a forward hook on every module with parameters of its own that registers a
     tensor hook on the module's output and on its input (what the probe hooks; the hooks
     compute nothing): the price of the hook machinery itself;
   - "one gradient read": the norms of all gradients (`torch._foreach_norm`, one multi-tensor
     pass) before every optimizer step, the least a per-layer gradient monitor reads.
2. The per-layer forward statistics of `stats="full"` for a tanh layer (the MLP's), as the
   probe computes them (`probe.stats.input_stats` + `output_stats`, eager, scratch memory, CPU
   host reads), against the same quantities in one function compiled by `torch.compile`
   (inductor fuses the reductions into a few loops; needs a C++ compiler), per call, at the
   MLP's layer size and at a transformer's (tokens x width). Skipped with a note when
   compilation fails.

    python benchmarks/probe_floor.py            # writes docs/results/probe-floor.{json,md}
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import statistics
import time

import torch
from overhead import RESULTS, VARIANTS, WORKLOADS, timing
from torch import Tensor, nn

from graddoctor.probe import stats
from graddoctor.probe.scratch import Scratch


class HooksOnly:
    """The probe's hooks, computing nothing: forward hooks that hook the output's and input's gradients."""

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer) -> None:
        mods = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
        self._handles = [m.register_forward_hook(self._on_forward) for m in mods]

    @staticmethod
    def _on_forward(module: nn.Module, args: tuple, out: object) -> None:
        x, y = stats.first_tensor(args), stats.first_tensor(out)
        for t in (y, x):
            if t is not None and t.requires_grad:
                t.register_hook(lambda g: None)

    def step(self, loss: Tensor) -> None:
        pass

    def close(self) -> None:
        for h in self._handles:
            h.remove()


class GradientRead(HooksOnly):
    """One multi-tensor pass over every gradient before each optimizer step (no other hook)."""

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer) -> None:
        self.norms = None
        self._handles = [opt.register_step_pre_hook(self._read)]

    def _read(self, opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        self.norms = torch.stack(torch._foreach_norm(grads))


FLOORS = {"plain": None, "hooks only": HooksOnly, "one gradient read": GradientRead,
          "norms": VARIANTS["norms"], "full": VARIANTS["full"]}


def fused(x: Tensor, y: Tensor, threshold: float) -> Tensor:
    """The quantities input_stats/output_stats give for a tanh input x and output y, in one function."""
    m = x.mean()
    neg_d = x * x - 1  # -phi'(x) for tanh, from its output
    return torch.stack([m, torch.linalg.vector_norm(x - m), (x.abs().amax(0) == 0).sum(dtype=torch.float32),
                        torch.linalg.vector_norm(neg_d), (neg_d > -threshold).sum(dtype=torch.float32),
                        torch.linalg.vector_norm(y)])


def per_call_us(fn, reps: int = 200) -> float:
    """Median over 7 blocks of the CPU time per call, in microseconds."""
    for _ in range(20):
        fn()
    out = []
    for _ in range(7):
        t0 = time.process_time()
        for _ in range(reps):
            fn()
        out.append((time.process_time() - t0) / reps * 1e6)
    return statistics.median(out)


def kernels() -> list[dict]:
    """Eager (the probe's own code) vs compiled statistics per layer call, at two sizes."""
    from graddoctor import activations

    threshold = activations.SATURATION_FRACTION * activations.get("tanh").max_deriv
    try:
        compiled = torch.compile(fused, dynamic=False)
    except Exception as exc:  # no compiler backend here
        return [{"note": f"torch.compile unavailable: {type(exc).__name__}"}]
    rows = []
    for name, shape in (("MLP layer, 128 x 256", (128, 256)), ("transformer layer, 256 tokens x 256", (256, 256)),
                        ("wide layer, 2048 x 512", (2048, 512))):
        g = torch.Generator().manual_seed(0)
        z = torch.randn(*shape, generator=g, requires_grad=True)
        x, y = torch.tanh(z), torch.randn(*shape, generator=g)
        src, scratch = stats.activation_of(x), Scratch()

        def eager() -> None:
            with torch.no_grad():
                stats.input_stats(x, src, scratch, True)
                stats.output_stats(y, scratch, True)

        xd = x.detach()
        t0 = time.perf_counter()
        try:
            compiled(xd, y, threshold)
        except Exception as exc:  # inductor needs a working C++ toolchain
            return [{"note": f"torch.compile failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"}]
        first = time.perf_counter() - t0
        e, c = per_call_us(eager), per_call_us(lambda: compiled(xd, y, threshold))
        rows.append({"size": name, "eager_us": e, "compiled_us": c, "speedup": e / c, "compile_s": first})
    return rows


def main() -> None:
    torch.set_num_threads(1)
    results = {"floors": {}, "kernels": kernels()}
    for name in ("mlp", "gpt2"):
        w = WORKLOADS[name]
        ms, ratios = timing(w, "cpu", variants=FLOORS)
        results["floors"][name] = {"summary": w.summary, "ms": ms, "ratio": ratios}
        print(name, {v: f"{r:.3f}x" for v, r in ratios.items()}, flush=True)
    lines = ["Ratios to the plain step (CPU time, one thread, variants interleaved, medians; "
             "`python benchmarks/probe_floor.py`):", "",
             "| workload | plain ms/step | " + " | ".join(v for v in FLOORS if v != "plain") + " |",
             "|---|---|" + "---|" * (len(FLOORS) - 1)]
    for name, r in results["floors"].items():
        lines.append(f"| {name} | {r['ms']['plain']:.1f} | "
                     + " | ".join(f"{r['ratio'][v]:.3f}x" for v in FLOORS if v != "plain") + " |")
    lines += ["", "Forward statistics of one tanh layer call, the probe's eager code vs one compiled function "
              "(microseconds of CPU time per call):", ""]
    if "note" in results["kernels"][0]:
        lines.append(results["kernels"][0]["note"])
    else:
        lines += ["| size | eager (graddoctor) | compiled | speed-up | first call (compile) |", "|---|---|---|---|---|"]
        lines += [f"| {k['size']} | {k['eager_us']:.0f} | {k['compiled_us']:.0f} | {k['speedup']:.2f}x | "
                  f"{k['compile_s']:.1f} s |" for k in results["kernels"]]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "probe-floor.json").write_text(json.dumps(results, indent=1) + "\n")
    (RESULTS / "probe-floor.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
