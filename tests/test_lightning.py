"""GradDoctorCallback in a real Lightning Trainer (CPU, a few steps), against a plain PyTorch loop.

`python tests/test_lightning.py --ddp OUT` is the 2-process run of test_ddp_ranks_record_the_global_batch:
Lightning's strategy="ddp" launches the second process by running this file again.
"""
import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import need
from torch.nn import functional as F

import graddoctor

pl = need("lightning.pytorch")  # `make setup` installs it: skipped without it, a failure under CI=true

from lightning.pytorch.loggers import Logger  # noqa: E402 (after the check that lightning is there)
from lightning.pytorch.plugins.precision import MixedPrecision  # noqa: E402

from graddoctor.integrations.lightning import GradDoctorCallback  # noqa: E402

# Lightning's own advice (log intervals, data-loader workers) and its pytree deprecation notice
pytestmark = pytest.mark.filterwarnings("ignore:.*(LeafSpec|logging interval|num_workers|does not have many workers).*")
BATCH, N = 16, 128


def net():
    return graddoctor.build(graddoctor.NetSpec(depth=5, width=16, activation="sigmoid", in_shape=(8,),
                                               out_features=3), seed=0)


class Boring(pl.LightningModule):
    """BoringModel-style: a graddoctor net, cross-entropy, SGD; optionally fails at one batch."""

    def __init__(self, fail_at: int | None = None):
        super().__init__()
        self.net, self.fail_at = net(), fail_at

    def training_step(self, batch, i):
        if i == self.fail_at:
            raise RuntimeError("planted failure")
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


class MemoryLogger(Logger):
    """Keeps every log_metrics call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    name, version = "memory", 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.calls.append((step, dict(metrics)))


def loader(batch=BATCH, sampler=None):
    g = torch.Generator().manual_seed(0)
    ds = torch.utils.data.TensorDataset(torch.randn(N, 8, generator=g), torch.randint(0, 3, (N,), generator=g))
    # no shuffling: the plain loop sees the same batches
    return torch.utils.data.DataLoader(ds, batch_size=batch, sampler=sampler)


def fit(cb, steps=6, module=None, data=None, **kw):
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", callbacks=[cb], enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False,
                         **{"devices": 1, "logger": False, **kw})
    module = module or Boring()
    trainer.fit(module, data or loader())
    return trainer, module


def plain_loop(steps=6, every=2, batch=BATCH):
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    with graddoctor.watch(model, optimizer=opt, every=every) as probe:
        for (x, y), _ in zip(loader(batch), range(steps)):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            probe.step(loss)
    return probe.trace


def no_hooks(module, trainer):
    mods = all(not m._forward_hooks and not m._forward_pre_hooks for m in module.modules())
    opts = all(not o._optimizer_step_post_hooks and not o._optimizer_step_pre_hooks for o in trainer.optimizers)
    return mods and opts


def test_callback_records_what_a_plain_loop_records(tmp_path, capsys):
    logger = MemoryLogger()
    cb = GradDoctorCallback(every=2, store=tmp_path / "runs.db")
    trainer, module = fit(cb, logger=logger)
    got, ref = cb.trace, plain_loop()
    assert got.steps.tolist() == ref.steps.tolist() == [0, 2, 4]
    assert got.layer_names == ["net." + n for n in ref.layer_names]  # the LightningModule owns `net`
    for m in ("grad_norm", "delta_rms", "input_grad_rms", "act_std", "saturated", "update_ratio", "loss",
              "global_grad_norm"):
        np.testing.assert_allclose(got[m], ref[m], rtol=1e-6, err_msg=m)
    assert np.isfinite(got["update_ratio"]).all()  # measured around the real optimizer step
    # the verdict: printed on rank 0, stored, kept on the callback
    assert "vanishing" in cb.diagnosis.kinds()
    assert "graddoctor: UNHEALTHY" in capsys.readouterr().out
    with graddoctor.RunStore(tmp_path / "runs.db") as store:
        run = store.runs("lightning")[-1]
        assert run.id == cb.run_id and "vanishing" in run.verdict and run.n_steps == 3
    # per-layer scalars through the trainer's logger, at each recorded step
    steps = [s for s, m in logger.calls if any(k.startswith("graddoctor/") for k in m)]
    assert steps == [1, 3, 5]  # trainer.global_step after recorded steps 0, 2, 4
    first = next(m for s, m in logger.calls if s == 1)
    assert first["graddoctor/grad_norm/net.body.0.linear"] == pytest.approx(ref["grad_norm"][0, 0], rel=1e-6)
    assert {"graddoctor/delta_rms/net.head", "graddoctor/update_ratio/net.head",
            "graddoctor/global_grad_norm"} <= set(first)
    assert no_hooks(module, trainer) and cb.probe._closed


def test_hooks_are_removed_when_training_raises():
    cb = GradDoctorCallback(every=1, print_report=False)
    module = Boring(fail_at=3)
    trainer = pl.Trainer(max_steps=6, accelerator="cpu", devices=1, callbacks=[cb], logger=False,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    with pytest.raises(RuntimeError, match="planted failure"):
        trainer.fit(module, loader())
    assert cb.probe._closed and no_hooks(module, trainer)
    assert cb.trace.steps.tolist() == [0, 1, 2]  # the steps before the failure are kept


def test_gradient_accumulation_records_optimizer_steps():
    cb = GradDoctorCallback(every=1, print_report=False)
    fit(cb, steps=3, accumulate_grad_batches=2)
    assert cb.trace.steps.tolist() == [0, 1, 2]  # 6 batches, 3 optimizer steps
    assert np.isfinite(cb.trace["update_ratio"]).all() and np.isfinite(cb.trace["loss"]).all()


def test_amp_plugin_scaler_is_undone():
    """Lightning's 16-mixed plugin (on CPU here) with two loss scales: the same statistics."""
    def run(scale):
        cb = GradDoctorCallback(every=1, print_report=False)
        scaler = torch.amp.GradScaler("cpu", init_scale=scale)
        fit(cb, steps=3, plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
        return cb.trace

    big, small = run(2.0 ** 12), run(2.0 ** 2)
    for t in (big, small):  # the plugin's scaler was found, and no step overflowed
        assert t.meta["amp_skipped_steps"] == [] and len(t) == 3
    # fp16 rounds a backward scaled by 4096 and one scaled by 4 differently (gradients below
    # fp16's range underflow at the small scale): measured 0.1% apart, hence 1%; an error signal
    # left scaled would be 1024x off
    np.testing.assert_allclose(big["delta_rms"], small["delta_rms"], rtol=0.01)
    np.testing.assert_allclose(big["grad_norm"], small["grad_norm"], rtol=0.01)


def test_bad_arguments_fail_at_once():
    with pytest.raises(graddoctor.GradDoctorError, match="stats preset"):
        GradDoctorCallback(stats="everything")
    with pytest.raises(graddoctor.GradDoctorError, match="every"):
        GradDoctorCallback(every=0)


# -- strategy="ddp", 2 CPU processes -----------------------------------------------------------
WORLD = 2
DDP_STEPS = N // (WORLD * BATCH)  # one epoch: the plain loop's loader of 2 x 16 has as many batches
DDP_DEADLINE = 300  # seconds for the two Lightning processes (~30 s on a quiet 2-core machine)


class Interleaved(torch.utils.data.Sampler):
    """Rank r of W gets samples r, r + W, r + 2W, ... (Lightning's own DistributedSampler shuffles)."""

    def __iter__(self):
        import torch.distributed as dist

        return iter(range(dist.get_rank(), N, dist.get_world_size()))  # read once the ranks are up

    def __len__(self):
        return N // WORLD


def ddp_main(out: Path) -> None:
    """One rank of a strategy="ddp" fit (Lightning starts the other by running this file again)."""
    torch.set_num_threads(1)
    cb = GradDoctorCallback(every=2, store=out / "runs.db")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        trainer, _ = fit(cb, steps=DDP_STEPS, data=loader(sampler=Interleaved()), devices=WORLD, strategy="ddp",
                         use_distributed_sampler=False)
    rank = trainer.global_rank
    cb.trace.save(out / f"rank{rank}.npz")
    (out / f"rank{rank}.json").write_text(json.dumps({
        "world_size": trainer.world_size, "run_id": cb.run_id, "printed": printed.getvalue(),
        "diagnosis": None if cb.diagnosis is None else sorted(cb.diagnosis.kinds())}))


def test_ddp_ranks_record_the_global_batch_and_rank_0_alone_writes(tmp_path):
    """Each rank gets every other sample of a batch (Interleaved); the trace is
    that of one process on the batches of 2 x 16, identical on both ranks, and only rank 0 prints
    the report and writes the run store."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    try:
        done = subprocess.run([sys.executable, __file__, "--ddp", str(tmp_path)], env=env, capture_output=True,
                              text=True, timeout=DDP_DEADLINE)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the 2-process Lightning fit did not finish within {DDP_DEADLINE} s")
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    traces = [graddoctor.Trace.load(tmp_path / f"rank{r}.npz") for r in range(WORLD)]
    ref = plain_loop(steps=DDP_STEPS, batch=WORLD * BATCH)
    assert [r["world_size"] for r in ranks] == [WORLD] * WORLD
    for t in traces:
        assert t.meta["world_size"] == WORLD and t.steps.tolist() == ref.steps.tolist() == [0, 2]
        assert t.layer_names == ["net." + n for n in ref.layer_names]
    for m in ("grad_norm", "delta_rms", "input_grad_rms", "act_std", "dead", "saturated", "update_ratio", "loss",
              "global_grad_norm"):
        np.testing.assert_array_equal(traces[1][m], traces[0][m], err_msg=m)  # the same numbers on every rank
        np.testing.assert_allclose(traces[0][m], ref[m], rtol=1e-5, err_msg=m)  # those of the global batch
    # one writer: rank 0 printed the verdict and saved the run; rank 1 neither
    assert ranks[0]["printed"].startswith("graddoctor: ") and ranks[1]["printed"] == ""
    assert ranks[0]["diagnosis"] == ranks[1]["diagnosis"] and "vanishing" in ranks[0]["diagnosis"]
    assert ranks[0]["run_id"] is not None and ranks[1]["run_id"] is None
    with graddoctor.RunStore(tmp_path / "runs.db") as store:
        assert [r.id for r in store.runs("lightning")] == [ranks[0]["run_id"]]


if __name__ == "__main__" and sys.argv[1:2] == ["--ddp"]:
    ddp_main(Path(sys.argv[2]))
