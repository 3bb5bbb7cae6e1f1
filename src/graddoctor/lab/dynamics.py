"""Pure: the conclusions about training dynamics (depth degradation, the step size).

Same contract as conclude.py: every seed's numbers in; the claim's checks seed by seed, then
sentences chosen by conditions on the numbers, each number as its range over the seeds.
"""
from __future__ import annotations

from .claims import DEGRADE, TRAINS_ACC, VANISH, Conclusion, conclude, trains, within
from .points import Point, acc, by, counts, points, span, values
from .summary import RunSummary

# The outcomes of a run by what its numbers show, worst first; FAILS are the too-large-step ones.
FAILS = ("diverges", "explodes", "vanishes", "saturates", "dead units", "loss grows")
OUTCOMES = (*FAILS, "trains", "stalls")


def _deepest(rs: list, arch: str):
    return max(by(rs, arch=arch), key=lambda r: r.depth)


def _shallowest(rs: list, arch: str):
    return min(by(rs, arch=arch), key=lambda r: r.depth)


def _degrades(rs: list, arch: str) -> bool:
    return _deepest(rs, arch).val_acc < _shallowest(rs, arch).val_acc - DEGRADE


def residual(runs: list[RunSummary]) -> Conclusion:
    """`residual`: plain nets lose accuracy with depth, residual nets do not; what the gradient does."""
    archs = values(runs, "arch")
    checks = []
    for arch in archs:
        if "residual" in arch:
            checks.append((f"{arch} loses less than {DEGRADE:g} accuracy from the shallowest to the deepest net",
                           lambda rs, a=arch: not _degrades(rs, a)))
        else:
            checks.append((f"{arch} loses more than {DEGRADE:g} accuracy from the shallowest to the deepest net",
                           lambda rs, a=arch: _degrades(rs, a)))
    if "plain+BN" in archs:
        checks.append((f"the deepest plain+BN net's ratio after training is within {VANISH:g} decades (not "
                       "vanishing)", lambda rs: within(_deepest(rs, "plain+BN").decades_trained)))
    pts = points(runs)
    says = []
    for arch in archs:
        ps = sorted(by(pts, arch=arch), key=lambda p: p.depth)
        accs = ", ".join(f"{span(p.get('val_acc'), acc)} at {p.depth}" for p in ps)
        says.append(f"{arch}: accuracy {accs}; "
                    f"decades at init {', '.join(span(p.get('decades_init')) for p in ps)}, after training "
                    f"{', '.join(span(p.get('decades_trained')) for p in ps)}.")
    plain_bn = sorted(by(pts, arch="plain+BN"), key=lambda p: p.depth)
    if plain_bn:
        says.append(_plain_bn(plain_bn[-1], plain_bn[0]))
    plain = sorted(by(pts, arch="plain"), key=lambda p: p.depth)
    if plain and all(r.decades_trained < -VANISH for r in plain[-1].runs):
        says.append(f"Without BN the plain {plain[-1].depth}-layer net's gradient vanishes during training "
                    f"({span(plain[-1].get('decades_init'))} at init, {span(plain[-1].get('decades_trained'))} "
                    f"after), with accuracy {span(plain[-1].get('val_acc'), acc)}.")
    return conclude(runs, checks, says)


def _plain_bn(deep: Point, shallow: Point) -> str:
    """What the deepest plain BN net's gradient does, said only as far as its numbers go."""
    text = f"With BatchNorm the plain {deep.depth}-layer net's ratio at init is {span(deep.get('decades_init'))}"
    text += (f" (it grows {span(deep.get('per_layer_init'), lambda v: f'{v:.2f}x')} per layer: exploding)"
             if all(r.decades_init > VANISH for r in deep.runs) else "")
    text += f" and after training {span(deep.get('decades_trained'))}"
    degraded = all(d.val_acc < s.val_acc - DEGRADE for d, s in zip(deep.runs, shallow.runs))
    if degraded and all(within(r.decades_trained) for r in deep.runs):
        return text + (f"; its accuracy ({span(deep.get('val_acc'), acc)}) is lower than at depth {shallow.depth} "
                       f"({span(shallow.get('val_acc'), acc)}) while its trained gradient is not vanishing: the "
                       "degradation He et al. (2016) describe is not explained by a vanishing gradient here.")
    return text + "."


def outcome(r: RunSummary) -> str:
    """What a run's numbers show, worst first (one of OUTCOMES)."""
    kinds = r.verdict_trained
    if r.diverged_at is not None or "non_finite" in kinds:
        return "diverges"  # a non-finite loss
    if r.decades_trained > VANISH or "exploding" in kinds:
        return "explodes"
    if r.decades_trained < -VANISH or "vanishing" in kinds:
        return "vanishes"
    if "saturation" in kinds:
        return "saturates"  # the diagnosis measured units at phi' < 1% of its maximum
    if "dead_units" in kinds:
        return "dead units"
    if trains(r):
        return "trains"
    return "loss grows" if r.final_loss > r.first_loss else "stalls"


def _step(r: RunSummary) -> float:
    return r.extra["lr"] / (1 - r.extra["momentum"])  # the effective step of SGD with momentum


def _step_map(rs: list[RunSummary]) -> bool:
    """One net on one seed: the smallest step stalls, some step trains, the largest fails."""
    rs = sorted(rs, key=_step)
    got = [outcome(r) for r in rs]
    return got[0] == "stalls" and "trains" in got and got[-1] in FAILS


def optimizer(runs: list[RunSummary]) -> Conclusion:
    """`optimizer`: by effective step, each net stalls first, trains somewhere, and fails last."""
    nets = values(runs, "net")
    checks = [(f"{net}: the smallest step lr/(1-momentum) stalls (below {TRAINS_ACC:g} accuracy, no pathology), "
               "some step trains, the largest fails", lambda rs, n=net: _step_map(by(rs, net=n))) for net in nets]
    pts = points(runs)
    says = []
    for net in nets:
        seen: dict[str, set[float]] = {}
        for r in sorted(by(runs, net=net), key=_step):
            seen.setdefault(outcome(r), set()).add(_step(r))
        says.append(f"{net}, outcome by effective step over all seeds: "
                    + "; ".join(f"{o} at {', '.join(f'{v:g}' for v in sorted(seen[o]))}" for o in OUTCOMES if o in seen)
                    + ".")
    return conclude(runs, checks, says, {"outcome": [counts([outcome(r) for r in p.runs]) for p in pts]})


__all__ = ["FAILS", "OUTCOMES", "optimizer", "outcome", "residual"]
