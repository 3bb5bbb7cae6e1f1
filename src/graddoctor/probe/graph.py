"""Which recorded layers feed which: the autograd graph between layer calls, read during one forward.

GraphRecorder tags the output of every recorded module call and, at each call, walks the
autograd graph back from the call's input to the nearest tagged outputs (or block inputs):
which layers feed it, and through what (a concatenation, the attention softmax). At a block's
output it walks back to the block's input: a path that skips the block's weight layers makes it
a residual block. Only during the first recorded step (probe/structure.py's StructurePart); the
walk costs a few hundred autograd nodes for a 12-block transformer, once.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from torch import Tensor, nn

# Autograd nodes visited at most per walk (a walk stops at the nearest recorded outputs; long
# walks happen only across big functional parts such as a loss or a custom attention kernel).
MAX_WALK = 4000


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
CAT, SCORE, SIGMOID, TANH = 1, 2, 4, 8
FLAG_NAMES = {CAT: "concat", SCORE: "attention_score", SIGMOID: "sigmoid", TANH: "tanh"}
CAT_OPS = frozenset({"CatBackward0", "StackBackward0"})
# saturating activations met on the way (the probe's own activation detection stops at value-
# changing ops such as padding; the walk sees through them)
ACT_OPS = {"SigmoidBackward0": SIGMOID, "TanhBackward0": TANH}


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
            f = flags | (CAT if kind in CAT_OPS else 0) | (SCORE if _is_score_op(kind) else 0) | ACT_OPS.get(kind, 0)
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
