"""Mixed precision: what the probe records does not depend on the GradScaler's loss scale.

bf16 autocast on CPU; a power-of-two loss scale multiplies every backward value exactly (no
rounding changes below overflow), so the scaled and the unscaled runs agree to float
round-off of the norms themselves: the tolerance is 1e-6 relative.
"""
import math

import numpy as np
import pytest
import torch
from models import backward_and_step
from torch import nn
from torch.nn import functional as F

import graddoctor
from graddoctor import GradDoctorError
from graddoctor.probe.trace import LAYER_METRICS

SCALE = 2.0 ** 16


def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(32, 64, generator=g), torch.randint(0, 10, (32,), generator=g)


def run(scaler=None, tell=True, dtype=torch.bfloat16, steps=4, bound=True, model=None, x=None):
    model = model or graddoctor.build(graddoctor.NetSpec(depth=6, width=32, activation="sigmoid"), seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    xs, y = data()
    x = xs if x is None else x
    blocks = [n for n, _ in model.named_modules() if n.count(".") == 1 and n.startswith("body.")]
    with graddoctor.watch(model, optimizer=opt if bound else None, scaler=scaler if tell else None,
                          blocks=blocks) as probe:
        for _ in range(steps):
            with torch.autocast("cpu", dtype=dtype):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            backward_and_step(loss, opt, scaler)
            probe.step(loss)  # after scaler.update(): the documented place
    return probe.trace


@pytest.mark.parametrize("bound", [True, False], ids=["optimizer_bound", "probe_step"])
def test_same_statistics_and_verdict_with_and_without_a_scaler(bound):
    plain = run(bound=bound)
    scaled = run(torch.amp.GradScaler("cpu", init_scale=SCALE), bound=bound)
    for m in LAYER_METRICS:
        np.testing.assert_allclose(scaled[m], plain[m], rtol=1e-6, atol=0, err_msg=m)
    np.testing.assert_allclose(scaled["loss"], plain["loss"], rtol=1e-6)
    for series in ("block_delta_rms", "block_delta_norm"):  # blocks: error signals, loss-scaled too
        got, want = scaled.series.get(series)[1], plain.series.get(series)[1]
        assert want.shape == (4, 6) and np.isfinite(want).all()
        np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=series)
    verdict = graddoctor.diagnose(plain).kinds()
    assert graddoctor.diagnose(scaled).kinds() == verdict and "vanishing" in verdict
    assert scaled.meta["amp_skipped_steps"] == []


def test_without_telling_the_probe_error_signals_are_scaled_and_parameter_gradients_are_not():
    plain = run()
    blind = run(torch.amp.GradScaler("cpu", init_scale=SCALE), tell=False)
    # the error signals are caught during backward: multiplied by the loss scale
    np.testing.assert_allclose(blind["delta_rms"] / plain["delta_rms"], SCALE, rtol=1e-6)
    # scaler.step(opt) unscales the parameter gradients before optimizer.step's pre-hook reads them
    np.testing.assert_allclose(blind["grad_norm"], plain["grad_norm"], rtol=1e-6)


def test_skipped_overflow_steps_are_left_out_but_a_nan_loss_is_not():
    torch.manual_seed(0)
    # fp16 autocast with a huge initial scale: the scaled backward overflows until the scale
    # has backed off (x0.5 per skipped step), exactly as GradScaler calibrates on a GPU
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 40)
    trace = run(scaler, dtype=torch.float16, steps=12)
    skipped = trace.meta["amp_skipped_steps"]
    assert skipped[0] == 0 and len(skipped) >= 3 and len(trace) == 12 - len(skipped)
    assert trace.steps.tolist() == [s for s in range(12) if s not in skipped]
    assert np.nan_to_num(trace["nonfinite_grad"]).sum() == 0 and np.isfinite(trace["delta_rms"]).all()
    # same calibration, unbound probe: the scale's drop during the step tells it was skipped
    unbound = run(torch.amp.GradScaler("cpu", init_scale=2.0 ** 40), dtype=torch.float16, steps=12, bound=False)
    assert unbound.meta["amp_skipped_steps"] == skipped
    # a NaN loss is no calibration step: recorded, and the diagnosis says non_finite
    x, _ = data()
    x[0, 0] = math.nan
    bad = run(torch.amp.GradScaler("cpu", init_scale=SCALE), x=x, steps=2)
    assert len(bad) == 2 and bad["nonfinite_loss"].tolist() == [1.0, 1.0]
    assert "non_finite" in graddoctor.diagnose(bad).kinds()


def test_recurrent_series_are_unscaled_too():
    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.rnn = nn.GRU(64, 16, batch_first=True)
            self.head = nn.Linear(16, 10)

        def forward(self, x):
            return self.head(self.rnn(x.reshape(len(x), 4, 16).repeat(1, 1, 4))[0][:, -1])

    plain = run(model=Seq(), steps=2)
    scaled = run(torch.amp.GradScaler("cpu", init_scale=SCALE), model=Seq(), steps=2)
    a = plain.series.get("time_input_grad", "rnn")[1]
    b = scaled.series.get("time_input_grad", "rnn")[1]
    assert a.shape == (2, 4) and np.isfinite(a).all()
    np.testing.assert_allclose(b, a, rtol=1e-6)


def test_a_scaler_that_is_not_one_is_a_clear_error():
    model = graddoctor.build(graddoctor.NetSpec(depth=2, width=8), seed=0)
    with pytest.raises(GradDoctorError, match="GradScaler"):
        graddoctor.watch(model, scaler=2.0 ** 16)


def test_a_loss_scaled_fp16_error_signal_norm_does_not_overflow():
    """Scaled by 1024, each element of dL/d(output) is 1024 (fine in fp16) but their norm over
    32 x 4096 elements is 3.7e5, beyond fp16's 65504: the norm is taken in float32."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4096), nn.Linear(4096, 4))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    with graddoctor.watch(model, optimizer=opt, scaler=scaler) as probe:
        with torch.autocast("cpu", dtype=torch.float16):
            out = model[0](torch.randn(32, 8))
            loss = model[1](out).float().mean() + out.float().sum()  # dL/d(out) = 1 + small, per element
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        probe.step(loss)
    trace = probe.trace
    assert trace.meta["amp_skipped_steps"] == []
    assert trace["delta_rms"][0, 0] == pytest.approx(1.0, rel=0.01)
