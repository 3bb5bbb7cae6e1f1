"""TensorBoard: watch(..., tensorboard=DIR) streams the statistics; `export --tensorboard` writes a stored run."""
from __future__ import annotations

import numpy as np
from conftest import need

import graddoctor as gd
from graddoctor.cli import main
from graddoctor.store import RunStore

# the tensorboard extra (`make setup` installs it): skipped without it, a failure under CI=true
EventAccumulator = need("tensorboard.backend.event_processing.event_accumulator").EventAccumulator


def _scalars(log_dir) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def test_watch_streams_per_layer_scalars_that_match_the_trace(tmp_path):
    data = gd.data.digits(seed=0)
    spec = gd.NetSpec(depth=4, width=16, in_shape=data.in_shape, activation="tanh", init="xavier_normal")
    model = gd.build(spec, seed=0)
    with gd.watch(model, tensorboard=tmp_path / "tb") as probe:
        gd.train(model, data, gd.TrainConfig(max_steps=12, lr=0.05), probe=probe, progress_bar=False)
    acc = _scalars(tmp_path / "tb")
    tags = acc.Tags()["scalars"]
    assert "run/loss" in tags and "grad_rms/01 body.0.linear" in tags and "delta_rms/05 head" in tags
    got = [e.value for e in acc.Scalars("grad_rms/01 body.0.linear")]
    want = probe.trace["grad_rms"][:, 0]
    np.testing.assert_allclose(got, want, rtol=1e-5)  # TensorBoard stores float32
    assert [e.step for e in acc.Scalars("run/loss")] == list(range(12))
    assert acc.Tags()["histograms"] == ["log10 grad_rms across layers", "log10 delta_rms across layers"]


def test_export_a_stored_run(tmp_path, capsys):
    data = gd.data.digits(seed=0)
    spec = gd.NetSpec(depth=3, width=16, in_shape=data.in_shape)
    model = gd.build(spec, seed=0)
    cfg = gd.TrainConfig(max_steps=5)
    with RunStore(tmp_path / "runs.db") as store:
        rid = store.start_run(spec.to_dict(), cfg.to_dict())
        with gd.watch(model) as probe, store.recorder(rid, probe.trace) as rec:
            hist = gd.train(model, data, cfg, probe=probe, on_step=rec, progress_bar=False)
        store.finish_run(rid, "done", hist, gd.diagnose(probe.trace))
    assert main(["export", str(rid), "--store", str(tmp_path / "runs.db"), "--tensorboard", str(tmp_path / "tb")]) == 0
    acc = _scalars(tmp_path / "tb" / f"run-{rid}")
    assert len(acc.Scalars("run/global_grad_norm")) == 5
