"""FSDP2 (fully_shard): 2 processes, gloo on CPU, against one unsharded process on the concatenated batch.

Each rank holds half of every parameter (the head's 3 rows split 2 + 1: uneven shards) and trains
on half of the batch. The probe measures each rank's shards and combines the step across ranks
with one all_gather. The recorded global norms (gradient, weight, update) and every other statistic
must equal those of the same model trained unsharded in one process, to float tolerance (rtol
1e-5, as for DDP in test_ddp.py: the sharded run averages the gradients in a reduce-scatter, a
different summation order; a per-shard number reported as the layer's is off by ~sqrt(2)).
Other kinds of sharding are refused with one line.
"""
from pathlib import Path

import numpy as np
import pytest
import ranks
import torch
import torch.distributed as dist
from conftest import missing
from test_ddp import BATCH, STEPS, data, make, train
from torch import nn
from torch.nn import functional as F

import graddoctor
from graddoctor.errors import GradDoctorError
from graddoctor.probe.fsdp import ShardsPart
from graddoctor.probe.trace import LAYER_METRICS, STEP_METRICS, Trace

if not (dist.is_available() and dist.is_gloo_available()):  # skipped without it, a failure under CI=true
    missing("torch.distributed with gloo", "a torch build with distributed support (the pytorch.org wheels have it)")
WORLD = 2
DEADLINE = 180  # seconds for the spawned pair (~10 s on an idle machine)
REFUSED = ("mixed", "tensor_parallel", "hsdp")


def sharded(kind: str = "mlp", shard_root: bool = True) -> nn.Module:
    """The test model with each block and the root under fully_shard (the root's: the head)."""
    from torch.distributed.fsdp import fully_shard

    model = make(kind)
    for block in model.body:
        fully_shard(block)
    if shard_root:
        fully_shard(model)
    return model


def train_unbound(model: nn.Module, x, y) -> graddoctor.Trace:
    """stats='norms', every=2, no optimizer bound: the step ends at probe.step(loss) (the other path)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with graddoctor.watch(model, stats="norms", every=2) as probe:
        for _ in range(STEPS):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            probe.step(loss)
    return probe.trace


def refusals() -> dict[str, str]:
    """What watch() says to each kind of sharding it cannot measure: the error's first words."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import ColwiseParallel, parallelize_module

    def hsdp():
        model = make("mlp")
        fully_shard(model, mesh=init_device_mesh("cpu", (1, WORLD), mesh_dim_names=("replicate", "shard")))
        return model

    cases = {"mixed": lambda: sharded(shard_root=False),
             "tensor_parallel": lambda: parallelize_module(make("mlp"), init_device_mesh("cpu", (WORLD,)),
                                                           {"body.0.linear": ColwiseParallel()}),
             "hsdp": hsdp}
    out = {}
    for name, build in cases.items():
        try:
            model = build()
        except Exception as exc:  # reported: the test fails saying why
            out[name] = f"could not build: {type(exc).__name__}: {exc}"
            continue
        try:
            graddoctor.watch(model).close()
            out[name] = "watched"
        except GradDoctorError as exc:
            out[name] = f"refused: {exc}"
    return out


def worker(rank: int, out: str) -> None:
    ranks.start(rank, WORLD, out, timeout_s=90)
    ranks.finish(rank, out, measure(rank, out))  # the models and probes are gone when the group goes


def measure(rank: int, out: str) -> dict:
    x, y = data(WORLD, rank)
    model = sharded()
    shard_rows = [p.to_local().shape[0] for p in model.head.parameters()]
    probe = train(model, model, x, y)
    part = next(p for p in probe._parts if isinstance(p, ShardsPart))
    report = {"collectives": part.calls, "ms": 1e3 * part.seconds / part.calls, "head_rows": shard_rows,
              "grad_sum": float(np.nansum(probe.trace["grad_norm"])), "meta": probe.trace.meta["sharding"]}
    norms = train_unbound(sharded(), x, y)
    if rank == 0:
        probe.trace.save(Path(out) / "fsdp.npz")
        norms.save(Path(out) / "norms.npz")
    tail = sharded()  # rank 1 alone: an inf input after the last recorded step (4), agreed at close
    report["nonfinite_tail"] = train(tail, tail, x, y, steps=6, every=4,
                                     bad_input_at=5 if rank == 1 else None).trace.meta["nonfinite"]
    report["refusals"] = refusals()
    return report


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    return out, ranks.run(worker, out, WORLD, DEADLINE, "FSDP2")


def test_sharded_trace_matches_one_unsharded_process_on_the_concatenated_batch(fsdp_run):
    out, reports = fsdp_run
    got = Trace.load(out / "fsdp.npz")
    model = make("mlp")
    ref = train(model, model, *data()).trace
    assert got.layer_names == ref.layer_names and got.steps.tolist() == ref.steps.tolist()
    assert got.meta["world_size"] == WORLD and got.meta["sharding"] == "fsdp2"
    assert [r["head_rows"] for r in reports] == [[2, 2], [1, 1]]  # the head's weight and bias: uneven shards
    checked = 0
    for m in LAYER_METRICS + STEP_METRICS:
        a, b = ref[m], got[m]
        assert np.array_equal(np.isnan(a), np.isnan(b)), m
        exact = m in ("dead", "saturated", "nonfinite_grad", "nonfinite_act", "nonfinite_loss")
        np.testing.assert_allclose(b, a, rtol=0 if exact else 1e-5, atol=0, err_msg=m)
        checked += int(np.isfinite(a).any())
    assert checked >= 15  # the comparison covers the recorded metrics, not a column of NaNs
    for m in ("grad_norm", "weight_rms", "update_ratio", "global_grad_norm", "delta_rms"):
        assert np.isfinite(ref[m]).all() and (ref[m] > 0).all(), m
    for series in ("block_delta_rms", "block_delta_norm"):
        np.testing.assert_allclose(got.series.get(series)[1], ref.series.get(series)[1], rtol=1e-5, err_msg=series)
    assert [r["collectives"] for r in reports] == [STEPS] * WORLD  # one all_gather per recorded step
    assert reports[0]["grad_sum"] == reports[1]["grad_sum"]  # the same global numbers on every rank
    print(f"FSDP2: all_gather per recorded step {reports[0]['ms']:.2f} ms on rank 0 (batch {BATCH})")


def test_norms_without_a_bound_optimizer_match_too(fsdp_run):
    out, _ = fsdp_run
    got, ref = Trace.load(out / "norms.npz"), train_unbound(make("mlp"), *data())
    assert got.steps.tolist() == ref.steps.tolist() == [0, 2]
    for m in ("grad_norm", "bias_grad_norm", "weight_rms", "global_grad_norm", "loss"):
        assert np.isfinite(ref[m]).all(), m
        np.testing.assert_allclose(got[m], ref[m], rtol=1e-5, atol=0, err_msg=m)


@pytest.mark.parametrize("case", REFUSED)
def test_other_sharding_is_refused_with_one_line(fsdp_run, case):
    _, reports = fsdp_run
    said = reports[0]["refusals"][case]
    assert said.startswith("refused: ") and "\n" not in said, said
    want = {"mixed": "not sharded", "tensor_parallel": "tensor parallelism", "hsdp": "2-D device mesh"}[case]
    assert want in said, said
    assert reports[1]["refusals"][case] == said


def test_deepspeed_is_refused_with_one_line():
    class DeepSpeedEngine(nn.Module):  # what deepspeed.initialize returns, by name
        def __init__(self):
            super().__init__()
            self.module = nn.Linear(2, 2)

    zero3 = nn.Linear(2, 2)
    zero3.weight.ds_id = 0  # ZeRO-3 marks its partitioned parameters
    for model, what in ((DeepSpeedEngine(), "DeepSpeed engine"), (zero3, "ZeRO-3 partitioned")):
        with pytest.raises(GradDoctorError, match=what):
            graddoctor.watch(model)


def test_fsdp1_is_refused_with_one_line():
    """FSDP1 cannot be built on CPU ("FSDP needs a non-CPU accelerator device"): an instance made
    without its __init__ stands in for one, at the top and nested."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    fsdp1 = FullyShardedDataParallel.__new__(FullyShardedDataParallel)
    nn.Module.__init__(fsdp1)
    fsdp1._modules["_fsdp_wrapped_module"] = nn.Linear(2, 2)  # where FSDP1 keeps it (add_module would recurse)
    for model in (fsdp1, nn.Sequential(nn.Linear(2, 2), fsdp1)):
        with pytest.raises(GradDoctorError, match=r"FullyShardedDataParallel \(FSDP1\)"):
            graddoctor.watch(model)


def test_the_checks_after_the_last_recorded_step_are_global(fsdp_run):
    _, reports = fsdp_run
    want = {"first_step": 5, "what": "loss", "input_first_step": 5}
    assert [r["nonfinite_tail"] for r in reports] == [want, want]
