"""The network's structure, learned from the model and its first recorded forward pass.

`find_blocks(model)` (no forward needed) names the modules that make the depth axis: the
repeated blocks of a ModuleList/Sequential (GPT-2's `h.0 .. h.11`, a ResNet's bottleneck
units, ConvNeXt's layers). `GraphRecorder` runs during the first recorded step only: it tags
the output of every recorded module call and, at each call, walks the autograd graph back
from the call's input to the nearest tagged outputs, so it learns which layers feed which
(and through what: a concatenation, the attention softmax), which blocks add their input to
their output (a residual stream) and which layers lie on a block's shortcut. No torch.fx:
the graph autograd builds anyway is read, nothing is traced. The result is a plain dict
(JSON-able), kept as `trace.structure`; diagnose/structure.py turns it into verdict inputs.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from torch import Tensor, nn

# A block must hold at least this many weight layers (modules owning a >= 2-D parameter:
# Linear, Conv, Embedding, attention projections; norms and scales own 1-D ones). One weight
# layer with its norm (a ResNet "conv layer", a NetSpec Linear + BatchNorm) is a layer, not a
# block; a residual unit has two or more.
MIN_BLOCK_WEIGHT_LAYERS = 2
# A repeated container needs at least this many children of one class.
MIN_REPEATS = 2
# Autograd nodes visited at most per walk (a walk stops at the nearest recorded outputs; long
# walks happen only across big functional parts such as a loss or a custom attention kernel).
MAX_WALK = 4000
CONTAINERS = (nn.ModuleList, nn.ModuleDict)


def _weight_layers(module: nn.Module) -> int:
    """Modules in `module`'s subtree (itself included) that own a parameter with >= 2 dimensions."""
    return sum(any(p.dim() >= 2 for p in m._parameters.values() if p is not None) for m in module.modules())


def _repeated_children(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The children of `module` that repeat one class (MIN_REPEATS or more) and are blocks by size.

    Only numbered children count (the entries of a ModuleList or Sequential: "0", "1", ...): a
    decoder layer's `self_attn` and `encoder_attn` share a class but are parts, not a sequence.
    A bare ModuleList/ModuleDict (a stage's list of blocks) is a container, never a block.
    """
    children = [(n, c) for n, c in module.named_children() if n.isdigit() and not isinstance(c, CONTAINERS)
                and _weight_layers(c) >= MIN_BLOCK_WEIGHT_LAYERS]
    counts = Counter(type(c) for _, c in children)
    return [(n, c) for n, c in children if counts[type(c)] >= MIN_REPEATS]


def find_blocks(model: nn.Module) -> list[str]:
    """Qualified names of the model's repeated blocks (the depth axis), in registration order.

    A block is a child of a container that holds MIN_REPEATS or more children of one class,
    each with MIN_BLOCK_WEIGHT_LAYERS or more weight layers; where such blocks nest (a ResNet
    stage of bottleneck units, a T5 stack of T5Blocks), the innermost ones are the depth axis.
    [] for a plain chain of layers (an MLP, an LSTM), which is its own depth axis.
    """
    names = {m: n for n, m in reversed(list(model.named_modules()))}  # a module's first name
    blocks: list[nn.Module] = []

    def visit(module: nn.Module) -> bool:
        """Collect blocks below `module`; True when any was found."""
        found = False
        repeated = {id(c) for _, c in _repeated_children(module)}
        for _, child in module.named_children():
            inner = visit(child)
            if id(child) in repeated and not inner:
                blocks.append(child)
            found = found or inner or id(child) in repeated
        return found

    visit(model)
    # a stage with a single unit (RegNet depths [1, 2, 2, 1]) was taken whole: use its unit,
    # the class of blocks found elsewhere, instead
    classes = {type(b) for b in blocks}
    refined: list[nn.Module] = []
    for b in blocks:
        inner = [m for m in b.modules() if m is not b and type(m) in classes]
        refined += [m for m in inner if not any(m in o.modules() for o in inner if o is not m)] or [b]
    seen: set[int] = set()
    out = []
    for b in refined:  # a module registered twice is one block
        if id(b) not in seen:
            seen.add(id(b))
            out.append(names[b])
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return sorted(out, key=lambda n: order.get(n, 0))


def _tensors(obj: object) -> Iterator[Tensor]:
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


def is_weight_layer(module: nn.Module) -> bool:
    """True for a module that owns a parameter with >= 2 dimensions (not a norm or a scale)."""
    return any(p is not None and p.dim() >= 2 for p in module._parameters.values())


# Flags carried along a walk: what the signal passed through between two recorded calls.
CAT, SCORE = 1, 2
FLAG_NAMES = {CAT: "concat", SCORE: "attention_score"}
CAT_OPS = frozenset({"CatBackward0", "StackBackward0"})


def _is_score_op(name: str) -> bool:
    return "Softmax" in name


def _is_sdpa(name: str) -> bool:
    """A fused attention kernel: its inputs 0 and 1 are the query and the key."""
    return name.startswith("ScaledDotProduct") or name.startswith("ScaledDotProductAttention")


class GraphRecorder:
    """Learns which recorded layers feed which from one forward pass (hooks it owns; see remove()).

    `layers`: the modules that own parameters (the probe's candidates) by qualified name;
    `blocks`: block names (find_blocks). Call `result()` after the step's backward; it returns
    None when no forward with gradients ran (an eval pass), so the caller keeps recording.
    """

    def __init__(self, model: nn.Module, names: dict[nn.Module, str], layers: list[nn.Module],
                 blocks: list[str]) -> None:
        self.names = names
        by_name = {n: m for m, n in names.items()}
        self.block_modules = [by_name[b] for b in blocks if b in by_name]
        self.layer_set = set(layers)
        # layers that hold other layers (an attention module owning a logit scale, a ConvNeXt
        # layer owning its LayerScale): what feeds them is found from their output, inwards
        self.holders = {m for m in layers if any(d in self.layer_set for d in m.modules() if d is not m)}
        self.param_names = {id(p): n for n, p in model.named_parameters()}
        self.tied = self._tied(model)
        self.calls: list[dict] = []  # per recorded call: module name, role, leading dims
        self.stops: dict[object, list[tuple[str, int]]] = {}  # autograd node -> [("L"|"I", call index)]
        self.open_blocks: list[int] = []  # call indices of the blocks whose forward is running
        self.edges: list[tuple[tuple[str, int], tuple[str, int], int]] = []  # producer, consumer, flags
        self.exit_params: dict[int, list[str]] = {}  # block call -> parameters met on its output walk
        self.walked = 0  # autograd nodes visited in all (the recorder's cost)
        self.handles: list = []
        for m in dict.fromkeys(list(layers) + self.block_modules):
            if m in set(self.block_modules):
                self.handles.append(m.register_forward_pre_hook(self._pre_block, with_kwargs=True))
            self.handles.append(m.register_forward_hook(self._post, with_kwargs=True))

    def remove(self) -> None:
        """Remove every hook and drop the autograd nodes held."""
        for h in self.handles:
            h.remove()
        self.handles, self.stops, self.open_blocks = [], {}, []

    @staticmethod
    def _tied(model: nn.Module) -> list[list[str]]:
        """Modules that share a parameter (tied input/output embeddings), by qualified name."""
        owners: dict[int, list[str]] = {}
        for mname, mod in model.named_modules(remove_duplicate=False):
            for p in mod._parameters.values():
                if p is not None and mname not in owners.setdefault(id(p), []):
                    owners[id(p)].append(mname)
        return [names for names in owners.values() if len(names) > 1]

    # -- hooks ------------------------------------------------------------------------------
    def _pre_block(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        import torch

        if not torch.is_grad_enabled():
            return
        x = next((t for t in _tensors((args, kwargs)) if t.requires_grad), None)
        call = len(self.calls)
        self.calls.append({"module": self.names[module], "role": "block", "lead": _lead(x), "end": None})
        self.open_blocks.append(call)
        if x is not None and x.grad_fn is not None:
            self.stops.setdefault(x.grad_fn, []).append(("I", call))

    def _post(self, module: nn.Module, args: tuple, kwargs: dict, out: object) -> None:
        import torch

        if not torch.is_grad_enabled():
            return
        ys = [t for t in _tensors(out) if t.grad_fn is not None]
        block = self.open_blocks.pop() if self.open_blocks and self.calls[self.open_blocks[-1]][
            "module"] == self.names[module] else None
        if block is not None and ys:
            found, params = self._walk([(ys[0].grad_fn, 0)])
            self.edges += [(src, ("O", block), flags) for src, flags in found.items()]
            self.exit_params[block] = params
        if block is not None:
            self.calls[block]["end"] = len(self.calls)
        if module not in self.layer_set:
            return
        xs = [t for t in _tensors((args, kwargs)) if t.requires_grad]
        call = len(self.calls)
        reads = [self.calls[k]["module"] for kind, k in self.stops.get(xs[0].grad_fn, []) if kind == "I"] if (
            xs and xs[0].grad_fn is not None) else []  # blocks whose very input tensor this layer reads
        self.calls.append({"module": self.names[module], "role": "layer", "lead": _lead(ys[0] if ys else None),
                           "in_lead": _lead(xs[0] if xs else None), "weights": is_weight_layer(module),
                           "reads": reads})
        roots = ys[:1] if module in self.holders else [x for x in xs if x.grad_fn is not None]
        found, _ = self._walk([(t.grad_fn, 0) for t in roots])
        self.edges += [(src, ("L", call), flags) for src, flags in found.items()]
        if ys:
            self.stops.setdefault(ys[0].grad_fn, []).append(("L", call))

    def _walk(self, roots: list[tuple[object, int]]) -> tuple[dict, list[str]]:
        """Nearest recorded outputs (and block inputs) behind `roots`: {(kind, call): flags}, params met."""
        found: dict[tuple[str, int], int] = {}
        params: list[str] = []
        seen: set[tuple[int, int]] = set()
        stack = list(roots)
        budget = MAX_WALK
        while stack and budget:
            node, flags = stack.pop()
            if node is None or (id(node), flags) in seen:
                continue
            seen.add((id(node), flags))
            budget -= 1
            tags = self.stops.get(node)
            if tags:
                for t in tags:
                    found[t] = found.get(t, 0) | flags
                continue
            kind = type(node).__name__
            if kind == "AccumulateGrad":
                name = self.param_names.get(id(node.variable))
                if name is not None and name not in params:
                    params.append(name)
                continue
            f = flags | (CAT if kind in CAT_OPS else 0) | (SCORE if _is_score_op(kind) else 0)
            sdpa = _is_sdpa(kind)
            for i, (nxt, _) in enumerate(node.next_functions):
                if nxt is not None:
                    stack.append((nxt, f | (SCORE if sdpa and i < 2 else 0)))
        self.walked += MAX_WALK - budget
        return found, params

    # -- the result ---------------------------------------------------------------------------
    def result(self) -> dict | None:
        """The structure as a JSON-able dict (see diagnose/structure.py), or None if nothing ran."""
        layer_calls = [i for i, c in enumerate(self.calls) if c["role"] == "layer"]
        if not layer_calls:
            return None
        name = lambda key: (self.calls[key[1]]["module"] if key[0] == "L"
                            else f"{self.calls[key[1]]['module']}:{'in' if key[0] == 'I' else 'out'}")
        feeds: dict[str, dict[str, list[str]]] = {}
        for src, dst, flags in self.edges:
            if dst[0] != "L":
                continue
            entry = feeds.setdefault(name(dst), {})
            kinds = set(entry.get(name(src), [])) | {v for k, v in FLAG_NAMES.items() if flags & k}
            entry[name(src)] = sorted(kinds)
        leads = Counter(self.calls[i]["lead"] for i in layer_calls if self.calls[i]["lead"])
        batch = leads.most_common(1)[0][0] if leads else 0
        layers: dict[str, dict] = {}
        for i in layer_calls:
            c = self.calls[i]
            if c["module"] in layers:
                layers[c["module"]]["calls"] += 1
                continue
            layers[c["module"]] = {"inputs": feeds.get(c["module"], {}), "weights": c["weights"], "calls": 1,
                                   "reads_block_input": c["reads"],
                                   "broadcast": bool(batch and c["lead"] and c["lead"] != batch)}
        blocks = [self._block(i) for i, c in enumerate(self.calls) if c["role"] == "block" and c["end"] is not None]
        seen: set[str] = set()
        blocks = [b for b in blocks if not (b["name"] in seen or seen.add(b["name"]))]
        return {"version": 1, "batch": batch, "layers": layers, "blocks": blocks, "tied": self.tied,
                "walked_nodes": self.walked}

    def _block(self, call: int) -> dict:
        """One block call: its layers, whether a path from its input to its output skips its weights."""
        start, end = call, self.calls[call]["end"]
        inside = {i for i in range(start + 1, end) if self.calls[i]["role"] == "layer"}
        succ: dict[object, set] = {}
        for src, dst, _ in self.edges:
            a = "IN" if src == ("I", call) else src[1] if src[0] == "L" and src[1] in inside else None
            b = "OUT" if dst == ("O", call) else dst[1] if dst[0] == "L" and dst[1] in inside else None
            if a is not None and b is not None:
                succ.setdefault(a, set()).add(b)
        cost = lambda n: int(self.calls[n]["weights"]) if isinstance(n, int) else 0
        # fewest weight layers on a path IN -> OUT (Dijkstra with 0/1 costs over a small DAG)
        best: dict[object, tuple[int, list]] = {"IN": (0, [])}
        frontier = ["IN"]
        while frontier:
            frontier.sort(key=lambda n: best[n][0])
            n = frontier.pop(0)
            for m in succ.get(n, ()):
                c = best[n][0] + cost(m)
                if m not in best or c < best[m][0]:
                    best[m] = (c, best[n][1] + ([m] if isinstance(m, int) else []))
                    frontier.append(m)
        weights = sum(self.calls[i]["weights"] for i in inside)
        skip = best.get("OUT")
        residual = skip is not None and (skip[0] == 0 or (skip[0] <= 1 < weights - skip[0]))
        outputs = {self.calls[s[1]]["module"] if s[0] == "L" else "in" for s, d, _ in self.edges
                   if d == ("O", call) and ((s[0] == "L" and s[1] in inside) or s == ("I", call))}
        return {"name": self.calls[call]["module"], "layers": sorted({self.calls[i]["module"] for i in inside},
                key=lambda n: min(i for i in inside if self.calls[i]["module"] == n)),
                "outputs": sorted(outputs),
                "residual": bool(residual), "connected": skip is not None,
                "shortcut": [self.calls[i]["module"] for i in skip[1]] if residual else [],
                "exit_params": self.exit_params.get(call, [])}


def _lead(t: Tensor | None) -> int:
    """The leading (batch) dimension of a tensor, 0 for none or a scalar."""
    return int(t.shape[0]) if t is not None and t.dim() else 0


class StructurePart:
    """The Probe's part (parts.py) that records the structure on the first recorded training step.

    Its hooks exist only during recorded full steps until a structure was learnt (normally step 0
    alone); the result goes to trace.meta["structure"]. Duck-types parts.Part (no import cycle).
    """

    wants_forward = False

    def __init__(self, model: nn.Module, layout, meta: dict, blocks: list[str]) -> None:
        self.model, self.layout, self.meta, self.blocks = model, layout, meta, blocks
        self.recorder: GraphRecorder | None = None
        self.done = False

    def begin(self, rec, full: bool) -> None:
        """Attach on a recorded full step (until the structure is known); detach otherwise."""
        if full and not self.done and self.recorder is None:
            self.recorder = GraphRecorder(self.model, self.layout.names, self.layout.candidates(), self.blocks)
        elif not full and self.recorder is not None:
            self.recorder.remove()
            self.recorder = None

    def forward(self, layer: int, x: Tensor | None) -> None:
        """Not used: the recorder has its own hooks (it needs outputs and block inputs)."""

    def file(self, rec) -> None:
        """No device values."""

    def finish(self, step: int, raw, token: object, own) -> object:
        """The step was recorded: keep the structure if its forward ran with gradients."""
        if self.recorder is not None:
            result = self.recorder.result()
            if result is not None:
                self.meta["structure"] = result
                self.done = True
                self.recorder.remove()
                self.recorder = None
        return raw

    def holding(self, step: int) -> bool:
        """Never holds a step."""
        return False

    def release(self, loss: object = None) -> list:
        """Nothing held."""
        return []

    def close(self, clean: bool = True) -> list:
        """Remove the recorder's hooks."""
        if self.recorder is not None:
            self.recorder.remove()
            self.recorder = None
        return []
