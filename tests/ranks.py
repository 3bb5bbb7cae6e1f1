"""Two spawned ranks on CPU (gloo) for the DDP and FSDP2 tests: start, finish, and say why one died.

A rank that dies of a signal (SIGABRT once in a CI run, after ~950 other tests) used to leave only
"process 1 terminated with signal SIGABRT". Each rank now writes Python's fault handler output to
OUT/rankN.fault, and the failure quotes it with the reports that were written, so the next one
says where. The rendezvous is a file in OUT (no free-port race, no TCP store thread), and
`finish` lets every object that holds the process group go and collects the cycles before the
group is destroyed: a group left to interpreter shutdown can abort the process with SIGABRT
(pytorch/pytorch#179291 describes gloo's worker threads doing so). Whether that was this
failure is not known: it did not reproduce here in 35 runs.
"""
import faulthandler
import gc
import json
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def start(rank: int, world: int, out: str, timeout_s: int) -> None:
    """Join the group of `world` CPU ranks whose rendezvous file is in `out`, one thread each."""
    torch.set_num_threads(1)
    faulthandler.enable(file=open(Path(out) / f"rank{rank}.fault", "w"), all_threads=True)  # noqa: SIM115
    dist.init_process_group("gloo", init_method=f"file://{Path(out) / 'rendezvous'}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=timeout_s))


def finish(rank: int, out: str, report: dict) -> None:
    """Write this rank's report, then leave the group once both ranks are done with it."""
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(report))
    gc.collect()  # DDP modules and probes in reference cycles still hold the group
    dist.barrier()
    dist.destroy_process_group()


def run(worker, out: Path, world: int, deadline_s: int, what: str) -> list[dict]:
    """Spawn `worker(rank, out)` on `world` ranks; their reports, or a failure that says what happened."""
    ctx = mp.spawn(worker, args=(str(out),), nprocs=world, join=False)
    deadline = time.monotonic() + deadline_s
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    p.terminate()
                pytest.fail(f"the {what} workers did not finish within {deadline_s} s")
    except mp.ProcessExitedException as exc:
        faults = {r: (out / f"rank{r}.fault").read_text() for r in range(world) if (out / f"rank{r}.fault").exists()}
        written = [r for r in range(world) if (out / f"rank{r}.json").exists()]
        pytest.fail(f"{exc}; reports written by ranks {written}; fault handler output: {faults}")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]
