"""Pure: which remedies to try for a diagnosis, in which order (singles, then pairs)."""
from __future__ import annotations

from itertools import combinations

from ..diagnose.findings import Cause, Diagnosis
from ..diagnose.table import remedies_of
from .base import Patient, Remedy, Sample
from .registry import FAMILIES, expand

# Pairs known to complement each other (one fixes the forward signal, the other the path the
# gradient takes), tried first when no single remedy fixes the problem.
CLASSIC_PAIRS: tuple[tuple[str, str], ...] = (
    ("add_norm", "add_residual"),
    ("swap_activation(relu)", "add_norm"),
    ("reinit", "add_norm"),
    ("tune_optimizer(lr/10)", "clip_gradients"),
    ("tune_optimizer(lr/10)", "warmup"),
)
MAX_PAIRS = 4  # pairs tried when no single fixes (screened, then raced like the singles)


# When the checkup at initialisation found nothing, what training shows arose while training:
# what the optimizer does is the first suspect (the weights it started from gave a healthy
# gradient), so the remedies for these causes come before those of the findings' own causes.
TRAINING_CAUSES = ("learning_rate_too_high",)


def _labels(names) -> list[str]:
    return [r.label for name in names for r in expand(name)]


def ranked_labels(diagnosis: Diagnosis, at_init: Diagnosis | None = None) -> list[str]:
    """Remedy labels for the non-info findings: by finding (worst first), then cause, then remedy.

    Each cause contributes the variants diagnose.table lists for it (lr/10 and lr/100 for a
    rate too high, never lr*10); a family the finding names that no cause covered adds all of
    its variants. With `at_init` (the checkup of the untreated network at initialisation): if it
    is healthy, the findings arose in training and the TRAINING_CAUSES' remedies come first;
    if not, the remedies of what it found come after the rest (e.g. a saturating activation
    behind layers that stalled under Adam).
    """
    out: list[str] = []
    if at_init is not None and at_init.healthy:
        out.extend(_labels(r for c in _causes(diagnosis, TRAINING_CAUSES) for r in remedies_of(c)))
    for f in diagnosis.findings:
        if f.severity == "info":
            continue
        out.extend(_labels(r for c in f.causes for r in remedies_of(c)))
        covered = {r.name for lab in out for r in expand(lab)}
        out.extend(_labels(family for family in f.remedies if family not in covered))
    for f in at_init.findings if at_init is not None else ():
        if f.severity != "info":
            out.extend(_labels(r for c in f.causes for r in remedies_of(c)))
    return list(dict.fromkeys(out))


LOWER_LR = "tune_optimizer(lr/"  # the label of a remedy that divides the learning rate (lr/10, lr/100)


def race_order(piloted: list) -> list:
    """The order piloted candidates (Trials, in the diagnosis' order) finish in: by pilot loss, but
    the diagnosis' first choice second at the latest, and first when it lowers the learning rate:
    a pilot is too short to see a lower rate pay off (it favours the smaller cut, lr/10 over lr/100)."""
    racing = sorted(piloted, key=lambda t: t.loss)
    if piloted:
        first = piloted[0]
        latest = 0 if first.label.startswith(LOWER_LR) else 1
        if racing.index(first) > latest:
            racing.remove(first)
            racing.insert(latest, first)
    return racing


def combined(trained: Diagnosis, at_init: Diagnosis | None) -> Diagnosis:
    """The training run's diagnosis plus the at-init findings of kinds it does not have."""
    if at_init is None:
        return trained
    extra = [f for f in at_init.findings if f.kind not in {g.kind for g in trained.findings}]
    return Diagnosis(trained.findings + extra, trained.layers, dict(trained.context))


def singles(diagnosis: Diagnosis, patient: Patient, sample: Sample | None,
            at_init: Diagnosis | None = None) -> tuple[list[Remedy], list[tuple[Remedy, str]]]:
    """The remedies to try one at a time (ranked), and those that do not apply here with why not."""
    if diagnosis.healthy:
        return [], []
    ok, skipped = [], []
    for r in (r for lab in ranked_labels(diagnosis, at_init) for r in expand(lab)):
        why = r.why_not(patient, diagnosis, sample)
        (skipped.append((r, why)) if why else ok.append(r))
    return ok, skipped


def _causes(diagnosis: Diagnosis, names: tuple[str, ...] | None = None) -> list[Cause]:
    """The causes of the non-info findings, the first of each name (with its evidence); `names`:
    these causes in this order, a bare Cause (no evidence) for one the diagnosis does not name."""
    found: dict[str, Cause] = {}
    for c in (c for f in diagnosis.findings if f.severity != "info" for c in f.causes):
        found.setdefault(c.name, c)
    return list(found.values()) if names is None else [found.get(n, Cause(n, "")) for n in names]


def pairs(diagnosis: Diagnosis, ranked: list[Remedy], best_first: list[Remedy],
          limit: int = MAX_PAIRS) -> list[tuple[Remedy, Remedy]]:
    """Pairs of different families, for when no single remedy fixes the problem.

    In order: the two best singles (by the loss they reached, `best_first`); one remedy per
    cause, combined across causes (each cause's best-trained remedy, else its first applicable
    one: e.g. normalize_inputs for input_scale with swap_activation for a saturating
    activation); the classic pairs; other combinations of trained singles. `ranked` are the
    applicable singles; each pair comes in surgery order (activation, init, norm, skips, ...).
    """
    applicable = {r.label: r for r in ranked}
    trained = {r.label: i for i, r in enumerate(best_first)}
    per_cause = []
    for cause in _causes(diagnosis):
        names = remedies_of(cause)
        options = [r for name in names for r in expand(name) if r.label in applicable]
        if options:
            rank = lambda r: (trained.get(r.label, len(trained)), options.index(r))
            per_cause.append(min(options, key=rank))
    order = {f: i for i, f in enumerate(FAMILIES)}
    classic = [(applicable[a], applicable[b]) for a, b in CLASSIC_PAIRS
               if a in applicable and b in applicable]
    found = [*combinations(best_first[:2], 2), *combinations(per_cause, 2), *classic,
             *combinations(best_first, 2)]
    out: list[tuple[Remedy, Remedy]] = []
    for a, b in found:
        if a.name != b.name and not any({a.label, b.label} == {x.label, y.label} for x, y in out):
            out.append(tuple(sorted((a, b), key=lambda r: order[r.name])))
    return out[:limit]
