"""The network's structure as the remedies need it: the diagnosis' own, not a second analysis.

The probe learns the structure during one recorded forward (probe/structure.py: which layers
feed which, which repeated blocks add their input to their output, which layers lie on a
block's shortcut) and diagnose/structure.py turns it into blocks and branches, each branch with
its *exits* (the layers whose output leaves it into the stream: GPT-2's attention and MLP
`c_proj`, a ResNet unit's last BatchNorm, BERT's `output.dense` before its post-LN norm).
`add_residual` reads the blocks' residual flags, `scale_branches`, `zero_init_norms` and
`layer_scale` read the exits. treat() hands over the Structure of the untreated run's trace
(Sample.structure); otherwise it is recorded here by the probe on one forward/backward of the
sample (weights unchanged, gradients cleared).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..diagnose.structure import Structure
from .base import Patient, Sample
from .hooks import SCALE
from .surgery import current

# Changes after which the untreated network's structure no longer describes the patient's
# (a new norm module is a new layer; a skip changes which blocks are residual).
STRUCTURAL_OPS = frozenset({"norm_after", "skip"})
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class Exit:
    """The last layer of one residual branch."""

    path: str
    norm: bool  # a normalisation layer (zero-initialising its weight silences the branch)
    scaled: bool  # a learnable per-channel factor (LayerScale) sits between it and the add
    channels: int  # size of its output's channel axis
    dim: int  # that axis (-1 for features last, 1 for convolution maps)


@dataclass
class Branches:
    """Every residual block of the depth axis and its branch exits."""

    blocks: dict[str, list[Exit]] = field(default_factory=dict)

    @property
    def exits(self) -> list[Exit]:
        """All exits, block by block."""
        return [e for es in self.blocks.values() for e in es]


def record(net: nn.Module, sample: Sample) -> Structure:
    """The Structure the probe records on one forward/backward of the sample (no weight changes)."""
    from ..diagnose.structure import analyse
    from ..probe.probe import watch

    try:
        with watch(net, every=1, stats="full") as probe:
            loss = sample.run(net)
            loss.backward()
            probe.step(loss)
    finally:
        net.zero_grad(set_to_none=True)
    return analyse(probe.trace)


_CACHE: dict[tuple, tuple[Patient, Sample, Structure]] = {}


def structure_of(patient: Patient, sample: Sample) -> Structure:
    """The patient's network's Structure: the untreated run's (Sample.structure) unless a change
    alters it, else recorded on the patient's network as built (cached like surgery.current)."""
    if sample.structure is not None and not any(c.op in STRUCTURAL_OPS for c in patient.changes):
        return sample.structure
    key = (id(patient.model), id(patient.spec), patient.changes, id(sample))
    hit = _CACHE.get(key)
    if hit is None or hit[0].model is not patient.model or hit[1] is not sample:
        if len(_CACHE) >= 8:
            _CACHE.pop(next(iter(_CACHE)))
        hit = _CACHE[key] = (patient, sample, record(current(patient, sample)[0], sample))
    return hit[2]


def _exit(net: nn.Module, s: Structure, i: int, scaled: bool, shape: tuple) -> Exit:
    mod = net.get_submodule(s.names[i])
    conv = isinstance(mod, CONVS) or (len(shape) == 4 and "BatchNorm" in type(mod).__name__)
    dim = 1 if conv else -1
    scaled = scaled or hasattr(mod, SCALE)  # graddoctor's own LayerScale is a hook on the exit
    return Exit(s.names[i], s.is_norm(i), scaled, shape[dim] if shape else 0, dim)


def residual_branches(patient: Patient, sample: Sample) -> tuple[nn.Module, Branches]:
    """The patient's network and the exits of the branches of its residual blocks.

    An exit that is a scale layer (a library's LayerScale module, owning a 1-D parameter) marks
    the branch as scaled; its exit is then the weight layer or norm feeding that scale.
    """
    net, flow = current(patient, sample)
    s = structure_of(patient, sample)
    out = Branches()
    for b in s.blocks:
        if not b.residual or not any(n in flow.out_shape for n in (s.names[i] for i in b.layers)):
            continue
        exits: list[Exit] = []
        for br in b.branches:
            for i in br.exits:
                scaled = bool(b.exit_params)  # a parameter multiplies the block's output (ConvNeXt's gamma)
                behind = [i]
                if not s.is_weight(i) and not s.is_norm(i):  # a scale layer: the layers feeding it
                    scaled, behind = True, [p for p, c in s.edges if c == i and p in br.layers] or [i]
                exits += [_exit(net, s, j, scaled, flow.out_shape.get(s.names[j], ())) for j in behind
                          if s.names[j] in flow.out_shape]
        if exits:
            out.blocks[b.name] = list({e.path: e for e in exits}.values())
    return net, out
