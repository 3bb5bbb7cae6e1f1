"""torch.compile: stats='full' on a compiled model is refused with what to do; stats='norms' works on it.

A compiled graph does not run module hooks added after it was traced (dynamo skips hook guards),
so a probe on the original module records nothing when the compiled copy is called: refused
up front for an OptimizedModule, and warned about when it happens. backend="eager" keeps the
tests fast (dynamo still traces the graph; no C++ code generation).
"""
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import graddoctor
from graddoctor import GradDoctorError
from graddoctor.probe.wrappers import NO_FORWARD


def small() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))


def train(model, call, stats, steps=3, probe_model=None):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g)
    with graddoctor.watch(probe_model if probe_model is not None else call, stats=stats, optimizer=opt) as probe:
        hooks = [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()]
        for _ in range(steps):
            loss = F.cross_entropy(call(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            probe.step(loss)
    return probe.trace, hooks


def test_full_stats_on_a_compiled_model_is_a_clear_error():
    compiled = torch.compile(small())  # a real OptimizedModule; never run here
    with pytest.raises(GradDoctorError) as err:
        graddoctor.watch(compiled)
    msg = str(err.value)
    assert "torch.compile" in msg and "stats='norms'" in msg and "_orig_mod" in msg
    assert not compiled._orig_mod[0]._forward_hooks  # nothing was attached


def test_norms_on_a_compiled_model_match_the_uncompiled_run():
    m = small()
    ref, _ = train(m, m, "norms")
    m2 = small()
    got, hooks = train(m2, torch.compile(m2, backend="eager"), "norms")
    assert hooks == [0] * len(hooks)  # no module hook may touch the compiled graph
    assert got.layer_names == ref.layer_names == ["0", "2"]  # the original module's names
    for metric in ("grad_norm", "bias_grad_norm", "weight_rms", "update_ratio"):
        np.testing.assert_allclose(got[metric], ref[metric], rtol=1e-5, err_msg=metric)
    np.testing.assert_allclose(got["loss"], ref["loss"], rtol=1e-6)


def test_calling_a_compiled_copy_of_a_watched_model_warns():
    m = small()
    compiled = torch.compile(m, backend="eager")
    compiled(torch.randn(2, 8))  # traced before the probe's hooks exist: they will not run
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trace, _ = train(m, compiled, "full", steps=2, probe_model=m)
    assert any(NO_FORWARD[:40] in str(w.message) for w in caught)
    assert not np.isfinite(trace["delta_rms"]).any()  # indeed nothing from the hooks
