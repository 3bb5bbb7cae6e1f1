"""Pure: the one line that describes a network's structure, for people (and the reports)."""
from __future__ import annotations

from .structure import Block, Structure


def _short(names: list[str], block: str) -> list[str]:
    """Layer names without the block prefix, shortened to the last part where that stays unique."""
    rel = [n[len(block) + 1:] for n in names]
    last = [r.rsplit(".", 1)[-1] for r in rel]
    return last if len(set(last)) == len(last) else [".".join(r.split(".")[-2:]) for r in rel]


def summarise(s: Structure) -> str:
    """One line: '12 blocks on a residual stream; inside each: attention (q, k, v, o), MLP (fc1, fc2)'."""
    if not s.blocks:
        out = f"a chain of {len(s.names)} layers"
    else:
        parts = []
        for key, idx in s.stacks.items():
            bs = [s.blocks[i] for i in idx]
            stages = len({b.stage for b in bs})
            res = sum(b.residual for b in bs)
            proj = sum(bool(b.residual and any(s.is_weight(i) for i in b.shortcut)) for b in bs)
            what = (f"{len(bs)} blocks" + (f" in {stages} stages" if stages > 1 else "") +
                    (" on a residual stream" if res == len(bs) else
                     f" ({res} residual)" if res else " in a chain" if s.recorded else ""))
            if proj:
                what += f", {proj} with a projection shortcut"
            parts.append(what if len(s.stacks) == 1 else f"{key.replace('.*', '')}: {what}")
        out = "; ".join(parts)
        rep = _representative(s)
        if rep is not None and rep.branches:
            inner = []
            for br in rep.branches:
                weights = [s.names[i] for i in br.layers if s.is_weight(i)]
                if weights:
                    inner.append(f"{br.label} ({', '.join(_short(weights, rep.name))})")
            if inner:
                out += "; inside each: " + ", ".join(inner)
        outside = sum(b < 0 for b in s.block_of)
        if outside:
            out += f"; {outside} layers outside the blocks"
    if s.tied:
        out += "; tied weights: " + ", ".join(" = ".join(f"'{n}'" for n in t) for t in s.tied)
    if s.concat_fed and not s.score_side:
        out += f"; {len(s.concat_fed)} layers read concatenations"
    return out


def _representative(s: Structure) -> Block | None:
    """A typical block: the middle one of the longest stack."""
    if not s.blocks:
        return None
    idx = max(s.stacks.values(), key=len)
    return s.blocks[idx[len(idx) // 2]]
