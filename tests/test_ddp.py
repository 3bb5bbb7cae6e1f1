"""DistributedDataParallel: 2 processes, gloo on CPU, against one process on the concatenated batch.

Each rank trains on half of the batch; the probe combines every recorded step across ranks with
one all_gather. Tolerance: rtol 1e-5. The two runs compute the same quantities in a different
order (each rank's mean over 16 samples, then DDP's average of the two gradients, vs one mean
over 32), so they differ by float32 round-off, ~1e-7 relative per step, growing slowly as the
weights take slightly different steps; 1e-5 leaves room for 4 steps and still catches any
real combination error (a missing 1/W on the error signals is 2x, an average of per-rank stds
or dead fractions is off by far more). Counts (dead, saturated) must match exactly.
"""
import warnings
from pathlib import Path

import numpy as np
import pytest
import ranks
import torch
import torch.distributed as dist
from conftest import missing
from torch import nn
from torch.nn import functional as F

import graddoctor
from graddoctor.probe.distributed import RanksPart, is_main
from graddoctor.probe.trace import LAYER_METRICS, STEP_METRICS, Trace

if not (dist.is_available() and dist.is_gloo_available()):  # skipped without it, a failure under CI=true
    missing("torch.distributed with gloo", "a torch build with distributed support (the pytorch.org wheels have it)")
WORLD, STEPS, BATCH = 2, 4, 32
DEADLINE = 120  # seconds for the spawned pair (it takes ~5 s)


class GRUNet(nn.Module):
    """A GRU read out at its last step: the per-time-step series go through the reduction too."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.rnn = nn.GRU(4, 8, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.rnn(x.reshape(len(x), 2, 4))[0][:, -1])


def make(kind: str) -> nn.Module:
    if kind == "gru":
        return GRUNet()
    return graddoctor.build(graddoctor.NetSpec(depth=4, width=16, activation="relu", in_shape=(8,),
                                               out_features=3), seed=0)


def data(world: int = 1, rank: int = 0):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(BATCH, 8, generator=g), torch.randint(0, 3, (BATCH,), generator=g)
    return x.chunk(world)[rank], y.chunk(world)[rank]


def train(model, probe_of, x, y, steps=STEPS, every=1, bad_input_at=None):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    inner = probe_of.module if isinstance(probe_of, nn.parallel.DistributedDataParallel) else probe_of
    blocks = [n for n, _ in inner.named_modules() if n.count(".") == 1 and n.startswith("body.")]
    bad = x.clone()
    bad[0, 0] = float("inf")
    with graddoctor.watch(probe_of, optimizer=opt, blocks=blocks, every=every) as probe:
        for i in range(steps):
            loss = F.cross_entropy(model(bad if i == bad_input_at else x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            probe.step(loss)
    return probe


def worker(rank: int, out: str) -> None:
    ranks.start(rank, WORLD, out, timeout_s=60)
    ranks.finish(rank, out, measure(rank, out))  # the models and probes are gone when the group goes


def measure(rank: int, out: str) -> dict:
    report = {"is_main": is_main()}
    x, y = data(WORLD, rank)
    for kind in ("mlp", "gru"):
        ddp = nn.parallel.DistributedDataParallel(make(kind))
        probe = train(ddp, ddp, x, y)
        red = next(p for p in probe._parts if isinstance(p, RanksPart))
        report[kind] = {"collectives": red.calls, "ms": 1e3 * red.seconds / red.calls,
                        "delta_sum": float(np.nansum(probe.trace["delta_rms"]))}
        if is_main():  # only rank 0 writes
            probe.trace.save(Path(out) / f"{kind}.npz")
    # rank 1 alone gets an inf input on unrecorded step 1: its loss is NaN, rank 0 sees only the
    # all-reduced NaN gradient; the check rows cross ranks, so rank 0's trace says what came first
    ddp = nn.parallel.DistributedDataParallel(make("mlp"))
    probe = train(ddp, ddp, x, y, steps=6, every=4, bad_input_at=1 if rank == 1 else None)
    report["nonfinite"] = probe.trace.meta["nonfinite"]
    # the same after the last recorded step (4): rank 1's inf input on step 5 rides in no recorded
    # step's collective; the ranks agree on the first bad steps at close
    ddp = nn.parallel.DistributedDataParallel(make("mlp"))
    probe = train(ddp, ddp, x, y, steps=6, every=4, bad_input_at=5 if rank == 1 else None)
    report["nonfinite_tail"] = probe.trace.meta["nonfinite"]
    with warnings.catch_warnings(record=True) as caught:  # the inner module without a group: rank-local
        warnings.simplefilter("always")
        graddoctor.watch(make("mlp")).close()
    report["warned"] = any("this rank's alone" in str(w.message) for w in caught)
    return report


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    return out, ranks.run(worker, out, WORLD, DEADLINE, "DDP")


@pytest.mark.parametrize("kind", ["mlp", "gru"])
def test_rank0_trace_matches_one_process_on_the_concatenated_batch(ddp_run, kind):
    out, reports = ddp_run
    got = Trace.load(out / f"{kind}.npz")
    model = make(kind)
    ref = train(model, model, *data()).trace
    assert got.layer_names == ref.layer_names and got.steps.tolist() == ref.steps.tolist()
    assert got.meta["world_size"] == WORLD
    for m in LAYER_METRICS + STEP_METRICS:
        a, b = ref[m], got[m]
        assert np.array_equal(np.isnan(a), np.isnan(b)), m
        exact = m in ("dead", "saturated", "nonfinite_grad", "nonfinite_act", "nonfinite_loss")
        np.testing.assert_allclose(b, a, rtol=0 if exact else 1e-5, atol=0, err_msg=m)
    if kind == "mlp":  # the block series: per-rank error signals, reduced like the layers'
        assert got.meta["blocks"] == ref.meta["blocks"] == [f"body.{i}" for i in range(4)]
        for series in ("block_delta_rms", "block_delta_norm"):
            want = ref.series.get(series)[1]
            assert want.shape == (STEPS, 4) and np.isfinite(want).all()
            np.testing.assert_allclose(got.series.get(series)[1], want, rtol=1e-5, err_msg=series)
    assert got.meta["nonfinite"] == ref.meta["nonfinite"] == {"first_step": None, "what": None,
                                                              "input_first_step": None}
    for name in ref.series.layers("time_input_grad"):
        for series in ("time_input_grad", "time_output_grad"):
            np.testing.assert_allclose(got.series.get(series, name)[1], ref.series.get(series, name)[1],
                                       rtol=1e-5, err_msg=series)
    # one collective per recorded step, the same trace on every rank, one writer
    assert [r[kind]["collectives"] for r in reports] == [STEPS] * WORLD
    assert reports[0][kind]["delta_sum"] == reports[1][kind]["delta_sum"]
    assert [r["is_main"] for r in reports] == [True, False]
    print(f"{kind}: all_gather per recorded step {reports[0][kind]['ms']:.2f} ms on rank 0")


def test_dead_units_are_those_silent_on_every_rank(ddp_run):
    """Per-rank dead fractions do not combine: the global count needs the OR of per-unit masks."""
    out, _ = ddp_run
    got = Trace.load(out / "mlp.npz")
    ref = train(*(lambda m: (m, m))(make("mlp")), *data(), steps=1).trace
    halves = [train(*(lambda m: (m, m))(make("mlp")), *data(WORLD, r), steps=1).trace for r in range(WORLD)]
    naive = np.mean([h["dead"][0] for h in halves], axis=0)  # what averaging the ranks would say
    assert np.nanmax(np.abs(naive - ref["dead"][0])) > 0  # this batch tells the two apart (a unit of 16)
    np.testing.assert_array_equal(got["dead"][0], ref["dead"][0])


def test_a_nonfinite_input_on_one_rank_on_an_unrecorded_step_reaches_rank_0(ddp_run):
    _, reports = ddp_run
    want = {"first_step": 1, "what": "loss", "input_first_step": 1}
    assert [r["nonfinite"] for r in reports] == [want, want]


def test_a_nonfinite_input_on_one_rank_after_the_last_recorded_step_reaches_every_rank(ddp_run):
    _, reports = ddp_run
    want = {"first_step": 5, "what": "loss", "input_first_step": 5}  # rank 0 alone saw a NaN gradient
    assert [r["nonfinite_tail"] for r in reports] == [want, want]


def test_a_rank_watching_the_inner_module_is_warned(ddp_run):
    _, reports = ddp_run
    assert all(r["warned"] for r in reports)
