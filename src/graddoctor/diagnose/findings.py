"""Finding, Cause, Diagnosis: what the diagnosis returns (plain data, JSON round-trip)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

KINDS = ("vanishing", "exploding", "saturation", "dead_units", "non_finite", "stalled_layers",
         "vanishing_through_time", "exploding_through_time",
         "by_design")  # always info: a pattern that looks like a symptom but is the design (patterns.py)
SEVERITIES = ("info", "warning", "critical")
CAUSES = (
    "saturating_activation", "chain_product_depth", "init_too_small", "init_too_large",
    "learning_rate_too_high", "learning_rate_too_low", "dead_relu", "input_scale",
    "recurrent_chain",  # an RNN's gradient over T steps is a product of T Jacobians
    "non_finite_input",  # NaN/Inf in the input batch itself
    "non_finite_forward",  # a forward op produced the first NaN/Inf (the module is named)
    "precision_underflow",  # fp16 gradients flushed to zero without a loss scaler
)


@dataclass(frozen=True)
class Cause:
    """One explanation of a finding, with the numbers that support it."""

    name: str  # one of CAUSES
    explanation: str  # one sentence, with numbers
    evidence: dict = field(default_factory=dict)
    score: float = 0.0  # ranking weight (higher = more likely); not a probability


@dataclass(frozen=True)
class Finding:
    """One symptom: what, how bad, where, why, and what to try."""

    kind: str  # one of KINDS
    severity: str  # one of SEVERITIES
    layers: tuple[str, ...]  # affected layers, qualified names in forward order
    summary: str  # one line for people
    evidence: dict = field(default_factory=dict)
    causes: tuple[Cause, ...] = ()  # ranked, most likely first
    remedies: tuple[str, ...] = ()  # ranked remedy names

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Finding:
        """Inverse of to_dict."""
        d = dict(d)
        d["layers"] = tuple(d.get("layers", ()))
        d["causes"] = tuple(Cause(**c) for c in d.get("causes", ()))
        d["remedies"] = tuple(d.get("remedies", ()))
        return cls(**d)


@dataclass
class Diagnosis:
    """The verdict on a trace: findings (worst first) and the per-layer table behind them."""

    findings: list[Finding]
    layers: list[str]  # all probed layers, forward order
    context: dict = field(default_factory=dict)  # steps judged, at_init, per-layer table, ...

    @property
    def healthy(self) -> bool:
        """True when nothing worse than 'info' was found."""
        return not any(f.severity != "info" for f in self.findings)

    def kinds(self) -> set[str]:
        """The kinds of the non-info findings."""
        return {f.kind for f in self.findings if f.severity != "info"}

    def to_dict(self) -> dict:
        """JSON-ready dict (the `--json` schema)."""
        return {"healthy": self.healthy, "findings": [f.to_dict() for f in self.findings],
                "layers": list(self.layers), "context": self.context}

    @classmethod
    def from_dict(cls, d: dict) -> Diagnosis:
        """Inverse of to_dict."""
        return cls([Finding.from_dict(f) for f in d.get("findings", [])], list(d.get("layers", [])),
                   dict(d.get("context", {})))

    def __str__(self) -> str:
        if self.healthy:
            head = "HEALTHY: gradients flow through every layer."
        else:
            head = "UNHEALTHY: " + ", ".join(sorted(self.kinds()))
        lines = [head]
        structure = self.context.get("structure", {}).get("summary")
        if structure:
            lines.append(f"structure: {structure}")
        for f in self.findings:
            lines.append(f"- [{f.severity}] {f.kind}: {f.summary}")
            for i, c in enumerate(f.causes, 1):
                lines.append(f"    cause {i}: {c.name} — {c.explanation}")
            if f.remedies:
                lines.append(f"    try: {', '.join(f.remedies)}")
        return "\n".join(lines)
