"""Cost of the probe's cross-rank reduction under DistributedDataParallel (2 gloo processes, CPU).

Per rank: a 20x256 tanh MLP, 64 samples, SGD. Variants, interleaved round-robin in one run,
median ms/step over rounds, ratios against the plain DDP step of the same run:
  plain             DDP without graddoctor
  probe, local      watch(ddp.module): statistics of this rank only, no collective
  probe, reduced    watch(ddp): one all_gather of the small statistics vector per recorded step
  reduced every=10  the same, recording every 10th step
The collective's cost per recorded step is (reduced - local). On a 2-core machine both ranks
share the cores, so waiting for the other rank is part of it.

    python benchmarks/ddp_collective.py [--rounds 5]
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn import functional as F

STEPS = 20  # steps per block


def _worker(rank: int, world: int, port: int, rounds: int) -> None:
    import warnings

    import graddoctor

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    model = nn.parallel.DistributedDataParallel(
        graddoctor.build(graddoctor.NetSpec(depth=20, width=256, activation="tanh"), seed=0))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(rank)
    x, y = torch.randn(64, 64, generator=g), torch.randint(0, 10, (64,), generator=g)

    def block(target: nn.Module | None, every: int = 1) -> float:
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
            return run(probe)

    variants = {"plain": lambda: block(None), "probe, local": lambda: block(model.module),
                "probe, reduced": lambda: block(model), "reduced every=10": lambda: block(model, 10)}
    block(None)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            dist.barrier()
            times[name].append(fn())
    if rank == 0:
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        print(f"torch {torch.__version__}, gloo, {world} processes, {STEPS} steps per block, {rounds} rounds")
        for name, ms in med.items():
            print(f"  {name:<18} {ms:7.2f} ms/step  {ms / med['plain']:.3f}x")
        print(f"  collective per recorded step: {med['probe, reduced'] - med['probe, local']:.2f} ms "
              "(reduced - local)")
    dist.destroy_process_group()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    mp.spawn(_worker, args=(2, port, args.rounds), nprocs=2, join=True)
