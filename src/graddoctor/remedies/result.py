"""Trial and TreatResult: what treat() measured, as rows, a winner and a printable table."""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field

from torch import nn

from ..diagnose.findings import Diagnosis
from .base import Change, Patient

# A finalist's rest of the budget is recorded every FINISH_EVERY-th step: its diagnosis only has to
# show (stages.finish) that no vanishing/exploding gradient is left (the probe still checks every step for a
# non-finite value, and a diverging loss is seen in the step losses), and a recorded step costs
# a full probe's overhead while the others cost close to a plain step.
FINISH_EVERY = 4

STATUSES = ("baseline", "fixed", "not fixed", "stopped after pilot", "dropped at init", "not applicable",
            "failed", "not tried")


def signal_ratio(diagnosis: Diagnosis | None) -> float:
    """First layer's error signal / the reference (last hidden) layer's, from the diagnosis table."""
    rows = (diagnosis.context.get("table") or []) if diagnosis is not None else []
    x = rows[0].get("signal_decades") if rows else None
    return math.nan if x is None else 10.0 ** x


@dataclass
class Trial:
    """One row of the treatment: the untreated baseline or one candidate (single or pair)."""

    label: str  # "baseline", "swap_activation(selu)", "add_norm + add_residual"
    patient: Patient
    status: str  # one of STATUSES
    at_init: Diagnosis | None = None  # checkup(steps=0) of the network as built
    after: Diagnosis | None = None  # diagnosis of the probed training run
    loss: float = math.nan  # training loss after the budget (inf if training diverged): on the whole
    # training set for in-memory data, else the mean of the last quarter of the step losses
    val_acc: float = math.nan  # validation accuracy after the budget (in-memory data only)
    seconds: float = 0.0  # surgery + screening + training + re-diagnosis
    steps: int = 0  # optimizer steps trained (the pilot only, for candidates stopped after it)
    min_step_loss: float = math.inf  # lowest finite mini-batch loss seen (the reference if it diverges)
    pilot_loss: float = math.nan  # training loss after the pilot segment (what ranks the candidates)
    note: str = ""  # why it does not apply, failed, was dropped or stopped
    timing: dict = field(default_factory=dict)  # seconds per stage: changes, build, screen, pilot, finish
    model: nn.Module | None = field(default=None, repr=False)  # the trained network
    run: object | None = field(default=None, repr=False)  # loop.Run: optimizer, scheduler (between segments)
    structure: object | None = field(default=None, repr=False)  # the baseline's diagnose.structure.Structure

    @property
    def changes(self) -> tuple[Change, ...]:
        """Every change this candidate makes to the user's network, config or inputs."""
        return self.patient.changes

    @property
    def fixed(self) -> bool:
        """The original finding is gone after the budget and the loss beat the baseline's."""
        return self.status == "fixed"

    def row(self) -> dict:
        """The table row: remedy, healthy after?, signal ratio at init -> after, loss, accuracy, seconds."""
        return {"remedy": self.label, "status": self.status,
                "healthy_after": None if self.after is None else self.after.healthy,
                "findings_after": sorted(self.after.kinds()) if self.after is not None else [],
                "ratio_init": signal_ratio(self.at_init), "ratio_after": signal_ratio(self.after),
                "pilot_loss": self.pilot_loss, "loss": self.loss, "val_acc": self.val_acc,
                "steps": self.steps, "seconds": self.seconds, "note": self.note,
                "changes": [str(c) for c in self.changes if c.op or c.scope == "training" or c.note]}


def summarize(changes: tuple[Change, ...], limit: int = 12) -> list[str]:
    """Changes as lines, identical edits merged ('1, 3, 5 (+17 more): Sigmoid() -> SELU()')."""
    groups: dict[tuple[str, str, str], list[str]] = {}
    for c in changes:
        groups.setdefault((c.before, c.after, c.note), []).append(c.module_path)
    lines = []
    for (before, after, note), paths in groups.items():
        where = ", ".join(paths[:3]) + (f" (+{len(paths) - 3} more)" if len(paths) > 3 else "")
        lines.append(f"{where}: {before} -> {after}" + (f"  ({note})" if note else ""))
    return lines[:limit] + ([f"... {len(lines) - limit} more kinds of change"] if len(lines) > limit else [])


def change_lines(changes: tuple[Change, ...]) -> list[str]:
    """The changes, those to the network first, then those for the training loop."""
    model = tuple(c for c in changes if c.scope != "training")
    loop = tuple(c for c in changes if c.scope == "training")
    return ([*summarize(model)] + (["in your training loop:"] + [f"  {x}" for x in summarize(loop)] if loop else []))


def _num(x: float, fmt: str = ".3g") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


@dataclass
class TreatResult:
    """Everything treat() measured: the diagnosis treated, every trial, the winner, the time."""

    diagnosis: Diagnosis  # what was treated
    trials: list[Trial]  # the baseline first, then candidates in the order they were tried
    budget_steps: int
    pilot_steps: int = 0  # the first segment, trained by every candidate that passed screening
    prior_loss: float = math.inf  # training loss of predicting the class frequencies (no learning)
    seconds: float = 0.0  # total wall time of treat()
    max_steps: int | None = None  # cap on the optimizer steps of all trials together (None: no cap)
    max_seconds: float | None = None  # cap on treat()'s wall time (None: no cap)

    started: float = field(default_factory=time.perf_counter, repr=False)  # when treat() began

    def step_seconds(self) -> float | None:
        """Median seconds of one unprobed step (the candidates' pilots); None before any ran."""
        xs = [t.timing["pilot"] / t.steps for t in self.trials[1:] if t.timing.get("pilot") and t.steps]
        return statistics.median(xs) if xs else None

    def affords(self, plain: int, probed: int, new_candidate: bool = True) -> bool:
        """True when `plain` unprobed and `probed` probed steps more stay within the budget: max_steps
        optimizer steps, and max_seconds of wall time (projected at the pilots' step time, with the
        fixed cost of a new candidate and the probe's cost as measured so far)."""
        if self.max_steps is not None and self.steps + plain + probed > self.max_steps:
            return False
        s = self.step_seconds()
        if self.max_seconds is None or s is None:
            return True
        tried = [t for t in self.trials[1:] if "build" in t.timing]
        fixed = sum(t.timing.get(k, 0.0) for t in tried for k in ("changes", "build", "screen")) / max(1, len(tried))
        b = self.baseline
        probed_factor = b.timing.get("finish", 0.0) / max(1, b.steps - self.pilot_steps) / s \
            if b.steps > self.pilot_steps else 1.0  # the probe's cost factor on a step recorded in full
        factor = 1.0 + max(0.0, probed_factor - 1.0) / FINISH_EVERY  # a finalist records every FINISH_EVERY-th
        need = (fixed if new_candidate else 0.0) + plain * s + probed * s * factor
        return time.perf_counter() - self.started + need <= self.max_seconds

    def deadline(self) -> float | None:
        """The time.perf_counter() by which a finalist must stop training: max_seconds after the start,
        less what its re-diagnosis takes (the untreated run's, as measured); None without max_seconds."""
        if self.max_seconds is None:
            return None
        return self.started + self.max_seconds - self.baseline.timing.get("diagnose", 0.0)

    def over_budget(self) -> str:
        """Why a candidate was not tried: the budget, and what was used of it."""
        caps = [f"{self.max_steps} steps" if self.max_steps is not None else "",
                f"{self.max_seconds:.3g} s" if self.max_seconds is not None else ""]
        return (f"over the budget ({' and '.join(c for c in caps if c)}; used {self.steps} steps, "
                f"{time.perf_counter() - self.started:.3g} s)")

    @property
    def baseline(self) -> Trial:
        """The untreated reference run."""
        return self.trials[0]

    @property
    def table(self) -> list[dict]:
        """One row per trial (the baseline first)."""
        return [t.row() for t in self.trials]

    @property
    def best(self) -> Trial | None:
        """The fixed candidate with the lowest training loss (None when nothing fixed it)."""
        fixed = [t for t in self.trials if t.fixed]
        return min(fixed, key=lambda t: (t.loss, -t.val_acc)) if fixed else None

    @property
    def reference_loss(self) -> float:
        """The loss to beat: the baseline's after the budget; if it diverged, the lowest it reached,
        but never more than a constant prediction of the class frequencies gets (learning nothing)."""
        b = self.baseline
        return b.loss if math.isfinite(b.loss) else min(b.min_step_loss, self.prior_loss)

    @property
    def steps(self) -> int:
        """Optimizer steps trained, all candidates and the baseline together."""
        return sum(t.steps for t in self.trials)

    def save(self, directory: str) -> str:
        """Write the winner: DIRECTORY/changes.json and DIRECTORY/state_dict.pt (see load_treated)."""
        from ..errors import GradDoctorError
        from .replay import save_treated

        best = self.best
        if best is None or best.model is None:
            raise GradDoctorError("nothing to save: no candidate fixed the problem (try a larger budget_steps)")
        extra = {"remedy": best.label, "spec": best.patient.spec.to_dict() if best.patient.spec else None,
                 "loss": best.loss, "baseline_loss": self.baseline.loss}
        return str(save_treated(directory, best.model, best.changes, extra))

    @property
    def target_kinds(self) -> set[str]:
        """The finding kinds a candidate must remove."""
        return self.diagnosis.kinds()

    def __str__(self) -> str:
        if self.diagnosis.healthy:
            return "HEALTHY: nothing to treat (no changes proposed)."
        if self.max_steps is not None or self.max_seconds is not None:
            caps = [f"{self.max_steps} steps" if self.max_steps is not None else "",
                    f"{self.max_seconds:.3g} s" if self.max_seconds is not None else ""]
            budget = f"; budget {' and '.join(c for c in caps if c)}, used {self.steps} steps, {self.seconds:.3g} s"
        else:
            budget = ""
        head = (f"treating: {', '.join(sorted(self.target_kinds))}; every candidate that passes screening "
                f"trains {self.pilot_steps} steps, the best {self.budget_steps}, with the baseline's seed "
                f"and data order{budget}")
        cols = ("remedy", "result", "findings after", "signal first/last init -> after", "pilot loss",
                "steps", "loss", "val acc", "s")
        rows = [(t.label, t.status, (",".join(sorted(t.after.kinds())) or "healthy") if t.after else "-",
                 f"{_num(r['ratio_init'], '.2g')} -> {_num(r['ratio_after'], '.2g')}",
                 _num(t.pilot_loss, ".4f"),
                 str(t.steps),
                 _num(t.loss, ".4f"), _num(t.val_acc, ".3f"), _num(t.seconds, ".1f"))
                for t, r in zip(self.trials, self.table)]
        if all(math.isnan(t.val_acc) for t in self.trials):  # streamed data: no validation set
            keep = [i for i, c in enumerate(cols) if c != "val acc"]
            cols, rows = tuple(cols[i] for i in keep), [tuple(r[i] for i in keep) for r in rows]
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
        fmt = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip()
        lines = [head, fmt(cols), fmt(tuple("-" * w for w in widths)), *map(fmt, rows)]
        best = self.best
        if best is None:
            lines.append("no candidate fixed the problem within the budget")
        else:
            if not math.isfinite(self.baseline.loss):
                lines.append(f"the baseline diverged; the loss to beat is the lowest it reached, capped at "
                             f"a constant class-frequency prediction's: {self.reference_loss:.4f}")
            acc = (f", val acc {best.val_acc:.3f} vs {self.baseline.val_acc:.3f}" if not math.isnan(best.val_acc)
                   else "")
            lines.append(f"best: {best.label} (loss {best.loss:.4f} vs baseline {self.baseline.loss:.4f}{acc})")
            lines += [f"  {line}" for line in change_lines(best.changes)]
            if best.patient.model is not None and any(c.op for c in best.changes):
                lines.append("  re-apply to a fresh model: graddoctor.apply_changes(model, result.best.changes)")
        notes = [t for t in self.trials if t.note and t.status in ("not applicable", "failed", "dropped at init",
                                                                   "not tried", "not fixed")]
        if notes:
            lines.append("why not:")
            lines += [f"  {t.label}: {t.note}" for t in notes]
        lines.append(f"total time {self.seconds:.1f} s")
        return "\n".join(lines)
