"""Cost of the probe's cross-rank reduction per recorded step under DDP and FSDP2 (2 gloo processes, CPU).

Per rank: a 20x256 tanh MLP, 64 samples, SGD; under FSDP2 each of its layers and the root are
fully_shard-ed (each rank holds half of every weight). Variants, interleaved round-robin in one
run, median ms/step over rounds, ratios against the plain step of the same parallelism:
  DDP plain             DistributedDataParallel without graddoctor
  DDP probe, local      watch(ddp.module): this rank's statistics only, no collective
  DDP probe, reduced    watch(ddp): one all_gather of the step's small statistics vector
  DDP reduced every=10  the same, recording every 10th step
  FSDP2 plain           fully_shard without graddoctor
  FSDP2 probe           watch(model): per-shard parameter sums + per-rank signals, one all_gather
  FSDP2 every=10        the same, recording every 10th step
"collective" is the time the probe spends in its reduction per recorded step (packing, the
all_gather, unpacking: timed inside, median over rounds), "bytes" what each rank sends. Under DDP
the cost can also be read as (reduced - local). On a 2-core machine both ranks share the cores,
so waiting for the other rank is part of every collective.

    python benchmarks/ddp_collective.py [--rounds 5]

Writes docs/results/ddp_collective.json and docs/results/ddp_collective.md.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import datetime
import json
import platform
import socket
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn import functional as F

STEPS = 20  # steps per block
RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


def _worker(rank: int, world: int, port: int, rounds: int, out: str) -> None:
    import warnings

    from torch.distributed.fsdp import fully_shard

    import graddoctor
    from graddoctor.probe.distributed import RanksPart

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)

    def net() -> nn.Module:
        return graddoctor.build(graddoctor.NetSpec(depth=20, width=256, activation="tanh"), seed=0)

    ddp = nn.parallel.DistributedDataParallel(net())
    fsdp = net()
    for layer in fsdp.body:
        fully_shard(layer)
    fully_shard(fsdp)
    opts = {id(m): torch.optim.SGD(m.parameters(), lr=0.01) for m in (ddp, fsdp)}
    g = torch.Generator().manual_seed(rank)
    x, y = torch.randn(64, 64, generator=g), torch.randint(0, 10, (64,), generator=g)
    cost: dict[str, list[tuple[float, int]]] = {}  # variant -> (seconds per collective, bytes) per round

    def block(name: str, model: nn.Module, target: nn.Module | None, every: int = 1) -> float:
        opt = opts[id(model)]

        def run(probe=None) -> float:
            t = time.perf_counter()
            for _ in range(STEPS):
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if probe is not None:
                    probe.step(loss)
            return (time.perf_counter() - t) / STEPS
        if target is None:
            return run()
        with graddoctor.watch(target, optimizer=opt, every=every) as probe:
            seconds = run(probe)
        part = next((p for p in probe._parts if isinstance(p, RanksPart)), None)
        if part is not None:
            cost.setdefault(name, []).append((part.seconds / part.calls, part.nbytes))
        return seconds

    variants = {"DDP plain": (ddp, None), "DDP probe, local": (ddp, ddp.module), "DDP probe, reduced": (ddp, ddp),
                "DDP reduced every=10": (ddp, ddp, 10), "FSDP2 plain": (fsdp, None), "FSDP2 probe": (fsdp, fsdp),
                "FSDP2 every=10": (fsdp, fsdp, 10)}
    block("", ddp, None), block("", fsdp, None)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for name, args in variants.items():
            dist.barrier()
            times[name].append(block(name, *args))
    if rank == 0:
        rows = []
        for name, ts in times.items():
            ms = statistics.median(ts) * 1e3
            plain = statistics.median(times[name.split()[0] + " plain"]) * 1e3
            c = cost.get(name)
            rows.append({"variant": name, "ms_per_step": ms, "ratio": ms / plain,
                         "collective_ms": statistics.median(s for s, _ in c) * 1e3 if c else None,
                         "bytes": c[0][1] if c else None})
        Path(out).write_text(json.dumps(rows))
    dist.destroy_process_group()


def table(rows: list[dict]) -> str:
    """The markdown table of the results."""
    lines = ["| variant | ms/step | vs plain | collective per recorded step | bytes sent per rank |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        c = "" if r["collective_ms"] is None else f"{r['collective_ms']:.2f} ms"
        b = "" if r["bytes"] is None else f"{r['bytes']:,}"
        lines.append(f"| {r['variant']} | {r['ms_per_step']:.2f} | {r['ratio']:.3f}x | {c} | {b} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    tmp = RESULTS / ".ddp_collective.tmp.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    mp.spawn(_worker, args=(2, port, args.rounds, str(tmp)), nprocs=2, join=True)
    rows = json.loads(tmp.read_text())
    tmp.unlink()
    by = {r["variant"]: r for r in rows}
    ddp_diff = by["DDP probe, reduced"]["ms_per_step"] - by["DDP probe, local"]["ms_per_step"]
    head = (f"torch {torch.__version__}, gloo, 2 processes on {os.cpu_count()} CPU cores ({platform.machine()}, "
            f"shared with other work), {STEPS} steps per block, rounds: {args.rounds}, "
            f"{datetime.date.today().isoformat()}; 20x256 tanh MLP, 64 samples per rank")
    md = "\n".join([head, "", table(rows), "",
                    f"DDP, (reduced - local): {ddp_diff:.2f} ms per recorded step.", ""])
    print(md)
    (RESULTS / "ddp_collective.md").write_text(md)
    (RESULTS / "ddp_collective.json").write_text(json.dumps(
        {"torch": torch.__version__, "cpus": os.cpu_count(), "steps_per_block": STEPS, "rounds": args.rounds,
         "date": datetime.date.today().isoformat(), "rows": rows, "ddp_reduced_minus_local_ms": ddp_diff},
        indent=1) + "\n")
    print(f"wrote {RESULTS / 'ddp_collective.md'} and .json")


if __name__ == "__main__":
    main()
