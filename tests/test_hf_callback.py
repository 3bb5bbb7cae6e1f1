"""GradDoctorCallback in a real Hugging Face Trainer: a tiny GPT-2 from a config, offline, a few steps on CPU."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import need
from torch.nn import functional as F

import graddoctor
from graddoctor.probe.trace import LAYER_METRICS
from graddoctor.store import RunStore

need("accelerate")  # the Trainer needs it
transformers = need("transformers")

from graddoctor.integrations.transformers import GradDoctorCallback, inner_optimizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent / "scripts"))
from hf_trainer import Tokens  # noqa: E402  (the dataset of the `run` test's Trainer script)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _model(seed: int = 0) -> transformers.GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=128, n_positions=32, n_embd=32, n_layer=2, n_head=2,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config)


def _train(tmp_path, doctor, steps=4, accumulate=1, report_to=(), **kw) -> transformers.Trainer:
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=8,
        gradient_accumulation_steps=accumulate, learning_rate=1e-3, report_to=list(report_to),
        save_strategy="no", logging_steps=1, disable_tqdm=True, use_cpu=True, seed=0, **kw)
    trainer = transformers.Trainer(model=_model(), args=args, train_dataset=Tokens(), callbacks=[doctor])
    trainer.train()
    return trainer


@pytest.mark.parametrize("accumulate", [1, 2], ids=["one-batch-per-step", "accumulate-2"])
def test_a_step_is_an_optimizer_step_and_matches_the_trainers_own_numbers(tmp_path, accumulate, capsys):
    doctor = GradDoctorCallback(every=1)
    trainer = _train(tmp_path, doctor, steps=3, accumulate=accumulate, max_grad_norm=0.0)  # 0: no clipping
    trace = doctor.trace
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert list(trace.steps) == [0, 1, 2] and len(logs) == 3
    # the Trainer's own per-step loss and (unclipped) gradient norm: the same steps, the same numbers
    np.testing.assert_allclose(trace["loss"], [h["loss"] for h in logs], rtol=1e-5)
    np.testing.assert_allclose(trace["global_grad_norm"], [h["grad_norm"] for h in logs], rtol=1e-5)
    assert np.isfinite(trace["delta_rms"]).all() and trace.layer_names[0] == "transformer.wte"
    # the scalars it adds reach the Trainer's logs
    np.testing.assert_allclose([h["graddoctor/grad_rms_max"] for h in logs], np.nanmax(trace["grad_rms"], 1), rtol=1e-6)
    spread = [np.log10(np.nanmax(d) / np.nanmin(d)) for d in trace["delta_rms"]]
    np.testing.assert_allclose([h["graddoctor/signal_spread_decades"] for h in logs], spread, rtol=1e-6)
    # printed, stored, reported on process zero
    assert doctor.diagnosis is not None and "verdict:" in capsys.readouterr().out
    with RunStore(tmp_path / "graddoctor" / "runs.db") as st:
        info = st.get_run(doctor.run_id)
        assert info.kind == "transformers" and info.status == "done" and info.n_steps == 3
        assert info.config["gradient_accumulation_steps"] == accumulate
        np.testing.assert_allclose([s[1] for s in st.steps(info.id)], trace["loss"], rtol=1e-6)
    assert doctor.report_path == tmp_path / "graddoctor" / f"report-{doctor.run_id}.html"
    assert doctor.report_path.stat().st_size > 10_000
    assert inner_optimizer(trainer.optimizer) is not trainer.optimizer  # accelerate's wrapper: the inner one steps


def test_scalars_reach_tensorboard(tmp_path, monkeypatch):
    need("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    doctor = GradDoctorCallback(every=2, store=False, log_layers=True)
    _train(tmp_path, doctor, steps=4, report_to=["tensorboard"])
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "train/graddoctor/grad_rms_max" in tags
    assert "train/graddoctor/delta_rms/transformer.h.0.attn.c_attn" in tags  # log_layers=True: per layer too
    got = [(e.step, e.value) for e in acc.Scalars("train/graddoctor/grad_rms_max")]
    assert [s for s, _ in got] == [1, 3]  # recorded steps 0 and 2 (every=2), logged at global steps 1 and 3
    np.testing.assert_allclose([v for _, v in got], np.nanmax(doctor.trace["grad_rms"], 1), rtol=1e-5)


def test_hooks_are_gone_after_training(tmp_path):
    backward = torch.autograd.backward
    doctor = GradDoctorCallback(every=1, store=False, print_report=False)
    trainer = _train(tmp_path, doctor, steps=2)
    assert torch.autograd.backward is backward and doctor.probe._closed
    graddoctor.watch(trainer.model).close()  # watchable again: every hook was removed


class _Accelerated:
    """What accelerate's AcceleratedOptimizer holds, for a loop that does what it does with fp16."""

    def __init__(self, optimizer, scaler):
        self.optimizer, self.scaler = optimizer, scaler


def _amp_loop(tmp_path, scaler, dtype, steps=5):
    model = graddoctor.build(graddoctor.NetSpec(depth=6, width=32, activation="sigmoid"), seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 64, generator=g), torch.randint(0, 10, (32,), generator=g)
    args = SimpleNamespace(world_size=1, output_dir=str(tmp_path), learning_rate=0.1, gradient_accumulation_steps=1,
                           max_steps=steps, fp16=True, bf16=False)
    state, control = transformers.TrainerState(), transformers.TrainerControl()
    doctor = GradDoctorCallback(every=1, store=False, print_report=False)
    doctor.on_train_begin(args, state, control, model=model, optimizer=_Accelerated(opt, scaler))
    losses = []
    for _ in range(steps):
        with torch.autocast("cpu", dtype=dtype):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        if scaler is not None:
            scaler.scale(loss).backward()  # as accelerator.backward does
            scaler.step(opt)  # unscales, then steps the inner optimizer (or skips it)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        losses.append(loss.item())
        doctor.on_step_end(args, state, control)
    doctor.on_train_end(args, state, control)
    return doctor.trace, losses


def test_mixed_precision_statistics_are_unscaled(tmp_path):
    plain, losses = _amp_loop(tmp_path, None, torch.bfloat16)
    scaled, _ = _amp_loop(tmp_path, torch.amp.GradScaler("cpu", init_scale=2.0 ** 16), torch.bfloat16)
    for m in LAYER_METRICS:  # a power-of-two scale is exact: the same numbers
        np.testing.assert_allclose(scaled[m], plain[m], rtol=1e-6, atol=0, err_msg=m)
    np.testing.assert_allclose(scaled["loss"], losses, rtol=1e-6)  # the loss unscaled too
    # fp16 with a huge first scale: the scaler skips the first steps; they are left out and listed
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 40, backoff_factor=2.0 ** -8)
    trace, losses = _amp_loop(tmp_path, scaler, torch.float16, steps=8)
    skipped = trace.meta["amp_skipped_steps"]
    assert skipped[:1] == [0] and len(trace) == 8 - len(skipped) > 0
    np.testing.assert_allclose(trace["loss"], [v for i, v in enumerate(losses) if i not in skipped], rtol=1e-3)


def test_two_processes_record_the_global_batch_and_only_rank_0_writes(tmp_path):
    import socket
    import subprocess

    with socket.socket() as s:  # a free port for the gloo rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    scripts = Path(__file__).resolve().parent / "scripts"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(scripts), os.environ.get("PYTHONPATH", "")]),
           "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "OMP_NUM_THREADS": "1"}
    ranks = [subprocess.Popen([sys.executable, str(scripts / "hf_ddp.py"), str(tmp_path)], cwd=tmp_path,
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=300)[0] for p in ranks]
    assert [p.returncode for p in ranks] == [0, 0], outs
    assert "rank 0 of 2: run 1" in outs[0] and "verdict:" in outs[0]
    assert "rank 1 of 2: run None" in outs[1] and "verdict:" not in outs[1]  # one writer, one printer
    a, b = (graddoctor.Trace.load(tmp_path / f"trace-{r}.npz") for r in (0, 1))
    assert a.meta["world_size"] == 2 and list(a.steps) == [0, 1, 2]
    for m in (*LAYER_METRICS, "loss"):  # each rank saw its own shard; both hold the global batch's numbers
        np.testing.assert_array_equal(a[m], b[m], err_msg=m)
    with RunStore(tmp_path / "runs.db") as st:
        assert [r.status for r in st.runs()] == ["done"]
