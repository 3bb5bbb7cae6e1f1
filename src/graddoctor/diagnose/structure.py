"""Pure: the network's structure as the verdicts need it — depth axis, blocks, branches, patterns.

Reads what probe/structure.py recorded on the first step (`trace.structure`: which layers feed
which, which blocks add their input to their output) and the Trace's layer list. The depth
axis is the chain of repeated blocks (one *stack* per ModuleList: a T5 has an encoder and a
decoder stack); inside a block, the layers that do not lie on its shortcut form *branches*
(connected parts of the block's layer graph: the attention, the MLP). Without a recorded
structure (a Trace saved before it existed, a compiled model) the blocks come from their names
alone and the network is judged as a chain of layers.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..probe.trace import Trace

NORM_WORDS = ("Norm",)  # class names of normalisation layers contain one of these


@dataclass(frozen=True)
class Branch:
    """Layers of one block that lie off its shortcut, connected among themselves."""

    label: str  # "attention", "MLP", "convolutions", "layers"
    layers: tuple[int, ...]  # trace layer indices, forward order
    exits: tuple[int, ...]  # the layers whose output leaves the branch (into the stream)


@dataclass(frozen=True)
class Block:
    """One repeated block on the depth axis."""

    name: str
    stack: str  # the depth axis it belongs to: its name with every index replaced by '*'
    stage: str  # its parent container (a ResNet stage)
    position: int  # index into trace.meta["blocks"] (the block series), -1 if not recorded
    residual: bool  # a path from its input to its output skips its weight layers
    layers: tuple[int, ...]  # its layers (trace indices, forward order)
    shortcut: tuple[int, ...]  # layers on the skip path (a projection, post-LN norms)
    branches: tuple[Branch, ...]
    self_layer: int  # the block itself as a layer (it owns e.g. a LayerScale), -1 if not
    exit_params: tuple[str, ...]  # parameters applied functionally on the way to its output


@dataclass
class Structure:
    """What the verdicts need to compare like with like."""

    names: list[str]
    types: list[str]
    blocks: list[Block]
    stacks: dict[str, list[int]]  # stack -> indices into blocks, forward order
    block_of: list[int]  # per layer: index into blocks, -1 outside every block
    score_side: frozenset[int]  # layers that reach their consumer only through an attention softmax (Q, K)
    concat_fed: frozenset[int]  # layers whose input passed through a concatenation
    other_lead: frozenset[int]  # layers whose output's first dimension is not the batch
    weighted: frozenset[int]  # layers that own a >= 2-D parameter (not norms or scales)
    tied: list[list[str]]
    recorded: bool  # False: no graph was recorded (blocks from names only)
    edges: frozenset[tuple[int, int]] = frozenset()  # (producer, consumer) between recorded layers
    summary: str = ""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready dict (diagnosis.context['structure'])."""
        stacks = {k: [self.blocks[i].name for i in v] for k, v in self.stacks.items()}
        blocks = [{"name": b.name, "stack": b.stack, "residual": b.residual,
                   "shortcut": [self.names[i] for i in b.shortcut],
                   "branches": [{"label": br.label, "layers": [self.names[i] for i in br.layers]}
                                for br in b.branches]} for b in self.blocks]
        return {"summary": self.summary, "axis": self.axis, "stacks": stacks, "blocks": blocks,
                "tied": self.tied, "attention_scores": [self.names[i] for i in sorted(self.score_side)],
                "concatenations": [self.names[i] for i in sorted(self.concat_fed)], "recorded": self.recorded}

    @property
    def axis(self) -> str:
        """'residual stream', 'chain of blocks' or 'chain of layers'."""
        if not self.blocks:
            return "chain of layers"
        return "residual stream" if self.residual_share() >= 0.5 else "chain of blocks"

    def residual_share(self) -> float:
        """Fraction of the blocks that add their input to their output."""
        return sum(b.residual for b in self.blocks) / max(len(self.blocks), 1)

    def is_norm(self, i: int) -> bool:
        """True for a normalisation layer."""
        return any(w in self.types[i] for w in NORM_WORDS)

    def attention_internal(self) -> frozenset[int]:
        """Q, K and V: the producers of a consumer that some producer reaches through an attention softmax."""
        out = set()
        for q in self.score_side:
            for p, c in self.edges:
                if p == q:
                    out |= {a for a, b in self.edges if b == c}
        return frozenset(out | self.score_side)

    def apart(self) -> frozenset[int]:
        """Layers judged apart from the chain: attention internals and outputs not batched by sample."""
        return self.attention_internal() | self.other_lead

    def is_weight(self, i: int) -> bool:
        """True for a layer with a weight matrix or kernel (not a norm or a scale)."""
        return i in self.weighted


_INDEX = re.compile(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.|$)")  # a dotted name's numeric parts


def stack_key(name: str) -> str:
    """'resnet.encoder.stages.2.layers.1' -> 'resnet.encoder.stages.*.layers.*'."""
    return _INDEX.sub("*", name)


def block_index(name: str) -> str:
    """'resnet.encoder.stages.2.layers.1' -> '2.1': the parts that stack_key replaces."""
    return ".".join(_INDEX.findall(name))


def _components(nodes: list[int], edges: set[tuple[int, int]]) -> list[list[int]]:
    """Connected parts of an undirected graph over `nodes`, each in the nodes' order."""
    parent = {n: n for n in nodes}

    def root(n: int) -> int:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for a, b in edges:
        if a in parent and b in parent:
            parent[root(a)] = root(b)
    groups: dict[int, list[int]] = {}
    for n in nodes:
        groups.setdefault(root(n), []).append(n)
    return list(groups.values())


def analyse(trace: Trace) -> Structure:
    """The Structure of a Trace's network (from trace.structure when recorded, else from names)."""
    names, types = trace.layer_names, [x.type for x in trace.layers]
    index = {n: i for i, n in enumerate(names)}
    rec = trace.meta.get("structure") or {}
    recorded_blocks = list(trace.meta.get("blocks") or [])
    block_dicts = rec.get("blocks") or [{"name": b} for b in recorded_blocks]
    layer_info = rec.get("layers", {})
    score, concat, other = set(), set(), set()
    weighted = {index[n] for n, info in layer_info.items() if n in index and info.get("weights")}
    if not layer_info:  # no graph recorded: norms and 1-D scales by their class names
        weighted = {i for i, t in enumerate(types) if not any(w in t for w in NORM_WORDS + ("Scale",))}
    edges: set[tuple[int, int]] = set()
    reads_stream: dict[int, set[str]] = {}  # layer -> the blocks whose input it reads (the stream)
    feeds_out: dict[str, set[int]] = {}
    for consumer, info in layer_info.items():
        c = index.get(consumer)
        if c is None:
            continue
        reads_stream[c] = {k[:-3] for k in info.get("inputs", {}) if k.endswith(":in")}
        if info.get("broadcast"):
            other.add(c)
        inputs = info.get("inputs", {})
        for producer, flags in inputs.items():
            p = index.get(producer)
            if p is not None:
                edges.add((p, c))
            if "concat" in flags:
                concat.add(c)
        for producer, flags in inputs.items():
            p = index.get(producer)
            if p is not None and "attention_score" in flags and not _also_plain(producer, layer_info):
                score.add(p)
    for b in rec.get("blocks", []):
        feeds_out[b["name"]] = {index[n] for n in b.get("outputs", []) if n in index}
    blocks: list[Block] = []
    block_of = [-1] * len(names)
    position = {n: i for i, n in enumerate(recorded_blocks)}
    for bd in block_dicts:
        name = bd["name"]
        prefix = name + "."
        inside = [i for i, n in enumerate(names) if n.startswith(prefix)]
        shortcut = tuple(index[n] for n in bd.get("shortcut", []) if n in index)
        own = index.get(name, -1)
        rest = [i for i in inside if i not in shortcut]
        on_stream = set(shortcut) | {i for i in inside if name in reads_stream.get(i, ())}
        # a layer that reads the stream (the block's input mixed with branch outputs) starts a
        # branch: edges into it are where the branch before it re-joined the stream
        parts = _components(rest, {(a, b) for a, b in edges if b not in on_stream})
        branches = []
        for part in parts:
            members = set(part)
            exits = tuple(i for i in part if i in feeds_out.get(name, set()) or
                          any(a == i and (b not in members or b in on_stream) for a, b in edges))
            branches.append(Branch(_label(part, score, types, weighted), tuple(part), exits))
        stage = name.rsplit(".", 1)[0] if "." in name else ""
        blocks.append(Block(name, stack_key(name), stage, position.get(name, -1), bool(bd.get("residual", False)),
                            tuple(inside), shortcut, tuple(branches), own, tuple(bd.get("exit_params", []))))
        for i in inside + ([own] if own >= 0 else []):
            block_of[i] = len(blocks) - 1
    stacks: dict[str, list[int]] = {}
    for k, b in enumerate(blocks):
        stacks.setdefault(b.stack, []).append(k)
    # tied weights between layers with weight matrices (an input embedding and an output head)
    tied = [t for t in ([n for n in group if index.get(n) in weighted] for group in rec.get("tied", [])) if len(t) > 1]
    s = Structure(names, types, blocks, stacks, block_of, frozenset(score), frozenset(concat), frozenset(other),
                  frozenset(weighted), tied, bool(rec), frozenset(edges))
    from .summary import summarise

    s.summary = summarise(s)
    return s


def _also_plain(producer: str, layer_info: dict) -> bool:
    """True when `producer` also reaches some consumer without the softmax (a fused q/k/v projection)."""
    return any(producer in info.get("inputs", {}) and "attention_score" not in info["inputs"][producer]
               for info in layer_info.values())


def _label(part: list[int], score: set[int], types: list[str], weighted: set[int]) -> str:
    """A readable name for a branch: attention, convolutions or MLP."""
    if any(i in score or "Attention" in types[i] for i in part):
        return "attention"
    weights = [types[i] for i in part if i in weighted]
    if weights and all("Conv" in t and t != "Conv1D" for t in weights):
        return "convolutions"
    return "MLP" if weights else "norms"
