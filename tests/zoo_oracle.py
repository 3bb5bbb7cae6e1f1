"""Ground truth by plain autograd, independent of graddoctor: what a planted fault really does.

Two measurements, both on the recipe's own batches, loss and optimizer:
- `block_profile`: per block along the depth axis (ZooModel.blocks, forward order), the RMS of
  dL/d(block output) from `torch.autograd.grad`, the RMS of the block's parameter gradients, and
  the fraction of exactly-zero parameter-gradient elements (underflow) — at init, or after training;
- `train`: the training loss per step of the recipe's own `train_step` and optimizer.
`measure(planted, base)` compares the planted recipe with its healthy base over seeds, at init and
after training; `Measured.holds` says whether the claimed kinds hold, with the numbers
(`Planted.evidence` records one such run; `benchmarks/zoo.py --oracle` re-measures them all).
"""
from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from zoo_base import N_BATCHES, Planted, ZooModel

DECADES = 2.0  # vanishing / exploding: the input-to-output gradient ratio, or the blocks' parameter
#                gradients themselves, move >= 2 decades against the healthy base
HARM = 0.5  # a training fault (lr, optimizer) costs training: after `steps` the loss is above the healthy
#             model's by at least HARM x the healthy model's own drop, or it went non-finite
HARMLESS = 0.1  # harmless: the final loss is within HARMLESS x the healthy drop of the healthy final loss,
#                 or better; a gradient fault (vanishing, exploding, underflow) must not be harmless
UNDERFLOW = 0.5  # precision underflow: >= half of a block's gradient elements are exactly zero


def _first_tensor(obj: object) -> Tensor | None:
    if isinstance(obj, Tensor):
        return obj
    if isinstance(obj, (tuple, list)):
        return next((t for t in map(_first_tensor, obj) if t is not None), None)
    if hasattr(obj, "to_tuple"):  # transformers ModelOutput
        return _first_tensor(obj.to_tuple())
    return None


def block_modules(model: nn.Module, pattern: str) -> list[tuple[str, nn.Module]]:
    """The modules whose qualified name fully matches `pattern` (registration order)."""
    return [(n, m) for n, m in model.named_modules() if n and re.fullmatch(pattern, n)]


def _rms(ts: list[Tensor]) -> float:
    n = sum(t.numel() for t in ts)
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in ts) / n) if n else math.nan


@dataclass
class Profile:
    """One backward at init, per block call in forward order."""

    names: list[str]  # block names (a block called twice appears twice)
    out_rms: list[float]  # RMS of dL/d(block output), per element
    param_rms: list[float]  # RMS of the block's parameter gradients (per block, not per call)
    zero_frac: list[float]  # fraction of exactly-zero parameter-gradient elements in the block
    loss: float

    def log_ratio(self) -> float:
        """log10 of the first block's output-gradient RMS over the last one's (input side / output side)."""
        return _log_ratio(self.out_rms[0], self.out_rms[-1])


def _log_ratio(a: float, b: float) -> float:
    if a == 0:
        return -math.inf
    return math.log10(a / b) if a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b) else math.nan


def block_profile(m: ZooModel, seed: int = 0, model: nn.Module | None = None) -> Profile:
    """Per-block gradient sizes of `m` (a fresh model at init, or `model`) by torch.autograd.grad."""
    model = m.make(seed) if model is None else model
    batch = m.batches(seed, N_BATCHES)[0]
    blocks = block_modules(model, m.blocks)
    calls: list[tuple[str, Tensor]] = []

    def keep(name: str):
        def hook(_mod: nn.Module, _args: tuple, out: object) -> None:
            t = _first_tensor(out)
            if t is not None and t.requires_grad:
                calls.append((name, t))
        return hook

    handles = [mod.register_forward_hook(keep(n)) for n, mod in blocks]
    try:
        torch.manual_seed(seed)
        loss = m.train_step(model, batch)
    finally:
        for h in handles:
            h.remove()
    params = [[p for p in mod.parameters() if p.requires_grad] for _, mod in blocks]
    flat = [p for ps in params for p in ps]
    grads = torch.autograd.grad(loss, [t for _, t in calls] + flat, allow_unused=True)
    outs, pg = grads[:len(calls)], list(grads[len(calls):])
    per_block, i = [], 0
    for ps in params:
        per_block.append([g if g is not None else torch.zeros_like(p) for p, g in zip(ps, pg[i:i + len(ps)])])
        i += len(ps)
    zero = [sum(int((g == 0).sum()) for g in gs) / max(sum(g.numel() for g in gs), 1) for gs in per_block]
    return Profile(names=[n for n, _ in calls], out_rms=[_rms([g]) if g is not None else 0.0 for g in outs],
                   param_rms=[_rms(gs) for gs in per_block], zero_frac=zero, loss=float(loss.detach()))


def train(m: ZooModel, seed: int = 0, steps: int = 50) -> tuple[nn.Module, list[float]]:
    """`m` trained for `steps` steps of its own recipe (no graddoctor involved), and the loss per step."""
    model = m.make(seed)
    batches = m.batches(seed, N_BATCHES)
    opt = m.make_optimizer(model.parameters())
    torch.manual_seed(seed)
    out = []
    for i in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = m.train_step(model, batches[i % len(batches)])
        loss.backward()
        opt.step()
        out.append(float(loss.detach()))
    model.zero_grad(set_to_none=True)
    return model, out


def losses(m: ZooModel, seed: int = 0, steps: int = 50) -> list[float]:
    """The training loss per step of `m`'s own recipe."""
    return train(m, seed, steps)[1]


def drop(ls: list[float]) -> float:
    """First loss minus the mean of the last five; -inf when the loss went non-finite."""
    if not all(math.isfinite(x) for x in ls):
        return -math.inf
    return ls[0] - statistics.fmean(ls[-5:])


def final(ls: list[float]) -> float:
    """The mean of the last five losses; inf when the loss went non-finite."""
    return statistics.fmean(ls[-5:]) if all(math.isfinite(x) for x in ls) else math.inf


@dataclass
class Phase:
    """Planted against healthy at one moment (init, or after training); medians over seeds."""

    log_ratio: float  # planted: log10 first/last block output-gradient RMS
    base_log_ratio: float  # the same on the healthy base
    param_shift: float  # median over blocks of log10(planted / healthy parameter-gradient RMS)
    zero_rise: float  # largest rise over the base, among blocks, of the exactly-zero gradient fraction

    @property
    def delta(self) -> float:
        """How far the input-to-output gradient ratio moved against the healthy base, in decades."""
        return self.log_ratio - self.base_log_ratio

    def text(self) -> str:
        """The numbers in words."""
        return (f"log10 |dL/d first block|/|dL/d last block| {self.log_ratio:+.2f} "
                f"(healthy {self.base_log_ratio:+.2f}), block parameter gradients {self.param_shift:+.2f} decades "
                f"vs healthy, exactly-zero gradient fraction +{self.zero_rise:.2f}")


def phase_holds(ph: Phase, kinds: frozenset[str], causes: tuple[str, ...]) -> bool:
    """The gradient fault is visible in this phase: underflow, or a >= DECADES move against healthy."""
    if "precision_underflow" in causes:
        return ph.zero_rise >= UNDERFLOW
    if "vanishing" in kinds:
        return ph.delta <= -DECADES or ph.param_shift <= -DECADES
    if "exploding" in kinds:
        return ph.delta >= DECADES or ph.param_shift >= DECADES
    return False


def profile_phase(p: Planted, base: ZooModel, seeds: tuple[int, ...] = (0,)) -> Phase:
    """The init phase alone (cheap: one backward per seed and recipe), for tests."""
    return _phase([block_profile(p.model, s) for s in seeds], [block_profile(base, s) for s in seeds])


def _phase(prof: list[Profile], bprof: list[Profile]) -> Phase:
    def shift(q: Profile, r: Profile) -> float:
        xs = [x for a, b in zip(q.param_rms, r.param_rms) if not math.isnan(x := _log_ratio(a, b))]
        return statistics.median(xs) if xs else math.nan
    med = lambda xs: statistics.median(xs) if not any(map(math.isnan, xs)) else math.nan
    return Phase(log_ratio=med([q.log_ratio() for q in prof]), base_log_ratio=med([q.log_ratio() for q in bprof]),
                 param_shift=med([shift(q, r) for q, r in zip(prof, bprof)]),
                 zero_rise=med([max(a - b for a, b in zip(q.zero_frac, r.zero_frac)) for q, r in zip(prof, bprof)]))


@dataclass
class Measured:
    """The oracle's numbers for one planted case (medians over seeds)."""

    name: str
    init: Phase
    trained: Phase | None  # None when the planted run went non-finite (no gradient to profile)
    drop: float  # planted: training loss drop over `steps` (first - mean of the last five)
    base_drop: float
    final: float  # planted: mean of the last five losses (inf if non-finite)
    base_final: float
    first_nonfinite: int | None  # first step with a non-finite loss (planted), any seed
    seeds: int
    steps: int

    @property
    def harmless(self) -> bool:
        """The planting costs nothing: the final loss within HARMLESS x the healthy drop of healthy, or better."""
        return self.first_nonfinite is None and self.final - self.base_final <= HARMLESS * self.base_drop

    @property
    def harm(self) -> bool:
        """The fault costs training: a worse final loss by HARM x the healthy drop, or divergence."""
        return self.first_nonfinite is not None or self.final - self.base_final >= HARM * self.base_drop

    def holds(self, p: Planted) -> tuple[bool, str]:
        """Whether `p`'s claim holds by these numbers, and the reason."""
        harm = (f"harm {self.harm}, harmless {self.harmless} (final loss {self.final:.2f} vs healthy "
                f"{self.base_final:.2f}, healthy drop {self.base_drop:.2f})")
        if p.extra.get("truth") == "cost":  # divergence or no progress: its cost is the truth
            return self.harm, harm
        phases = [(w, ph) for w, ph in (("init", self.init), ("trained", self.trained)) if p.when in (w, "both")]
        ok = bool(p.kinds) and all(ph is not None and phase_holds(ph, p.kinds, p.causes) for _, ph in phases)
        moved = "; ".join(f"{w}: ratio {ph.delta:+.1f}, parameters {ph.param_shift:+.1f} decades, zero fraction "
                          f"+{ph.zero_rise:.2f}" for w, ph in (("init", self.init), ("trained", self.trained))
                          if ph is not None)
        return ok and not self.harmless, f"{moved}; {harm}"

    def category(self, p: Planted) -> str:
        """"planted" (the claim holds), "harmless" (expected healthy) or "unscored" (harm without the claim)."""
        if self.holds(p)[0]:
            return "planted"
        return "harmless" if self.harmless else "unscored"

    def summary(self) -> str:
        """One line with every number, for Planted.evidence and `benchmarks/zoo.py --oracle`."""
        nf = "" if self.first_nonfinite is None else f", first non-finite loss at step {self.first_nonfinite}"
        tr = "no gradient (non-finite)" if self.trained is None else self.trained.text()
        return (f"at init: {self.init.text()}; after {self.steps} steps: {tr}; loss {self.drop:+.2f} -> final "
                f"{self.final:.2f} (healthy drop {self.base_drop:.2f}, final {self.base_final:.2f}){nf}; "
                f"median of {self.seeds} seeds")


_BASE_CACHE: dict[tuple[str, int, int], tuple[list[float], Profile, Profile]] = {}


def _base_run(base: ZooModel, seed: int, steps: int) -> tuple[list[float], Profile, Profile]:
    """The healthy base's losses and profiles at init and after training (cached: bases are shared)."""
    key = (base.name, seed, steps)
    if key not in _BASE_CACHE:
        model, ls = train(base, seed, steps)
        _BASE_CACHE[key] = (ls, block_profile(base, seed), block_profile(base, seed, model))
    return _BASE_CACHE[key]


def measure(p: Planted, base: ZooModel, seeds: tuple[int, ...] = (0, 1, 2), steps: int = 50) -> Measured:
    """Profile (at init and after `steps` steps) and train the planted recipe and its healthy base."""
    runs = [train(p.model, s, steps) for s in seeds]
    based = [_base_run(base, s, steps) for s in seeds]
    bruns = [(None, ls) for ls, _, _ in based]
    init = _phase([block_profile(p.model, s) for s in seeds], [b[1] for b in based])
    nonfinite = [next((i for i, x in enumerate(r) if not math.isfinite(x)), None) for _, r in runs]
    trained = None
    if all(i is None for i in nonfinite):
        trained = _phase([block_profile(p.model, s, m) for s, (m, _) in zip(seeds, runs)], [b[2] for b in based])
    med = statistics.median
    return Measured(name=p.name, init=init, trained=trained, drop=med([drop(r) for _, r in runs]),
                    base_drop=med([drop(r) for _, r in bruns]), final=med([final(r) for _, r in runs]),
                    base_final=med([final(r) for _, r in bruns]),
                    first_nonfinite=min((i for i in nonfinite if i is not None), default=None),
                    seeds=len(seeds), steps=steps)


def optimizer_underflow(m: ZooModel, seed: int = 0) -> dict:
    """One step of `m`'s recipe: where its optimizer's state underflows (for 16-bit parameters).

    Returns the fraction of Adam second-moment entries that are exactly zero although their
    gradient is not (g*g below the dtype's smallest subnormal), whether `eps` rounds to zero in
    the parameters' dtype, and how many parameter tensors hold non-finite values after the step.
    """
    model = m.make(seed)
    batch = m.batches(seed, N_BATCHES)[0]
    opt = m.make_optimizer(model.parameters())
    torch.manual_seed(seed)
    m.train_step(model, batch).backward()
    opt.step()
    lost = total = 0
    for p in model.parameters():
        state = opt.state.get(p, {})
        if p.grad is None or "exp_avg_sq" not in state:
            continue
        live = p.grad != 0
        lost += int((live & (state["exp_avg_sq"] == 0)).sum())
        total += int(live.sum())
    dtype = next(model.parameters()).dtype
    eps = opt.param_groups[0].get("eps", 0.0)
    return {"second_moment_zero": lost / max(total, 1), "eps_is_zero": float(torch.tensor(eps, dtype=dtype)) == 0.0,
            "nonfinite_params": sum(not bool(torch.isfinite(p).all()) for p in model.parameters()),
            "params": sum(1 for _ in model.parameters()), "dtype": str(dtype)}
