"""The Ray backend: a local Ray instance limited to 2 CPUs (no dashboard), against the local pool.

The same grid gives the same runs on both backends (same seeds -> the same losses, bit for bit:
each run trains on one thread either way); a failing task is reported with its error while the
others finish and are stored; --resume skips what is stored. One Ray instance serves the module.
"""
from __future__ import annotations

import numpy as np
import pytest
from conftest import need
from test_sweep import SWEEP, tiny_grid

from graddoctor.cli import main
from graddoctor.errors import GradDoctorError
from graddoctor.lab.grid import Job
from graddoctor.lab.runner import run_jobs
from graddoctor.nets import NetSpec
from graddoctor.store import RunStore
from graddoctor.training import TrainConfig


@pytest.fixture(scope="module")
def ray():
    ray = need("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_the_same_grid_gives_the_same_runs_on_ray_and_the_local_pool(ray, tmp_path):
    jobs = tiny_grid()
    local = run_jobs(jobs, tmp_path / "local.db", workers=2, progress_bar=False)
    remote = run_jobs(jobs, tmp_path / "ray.db", progress_bar=False, backend="ray")
    assert [r.job for r in remote] == jobs  # results in job order, whatever order the tasks finished in
    for a, b in zip(local, remote):
        assert a.history.step_loss == b.history.step_loss and len(a.history.step_loss) == 12
        for m in ("grad_norm", "delta_rms", "update_ratio"):
            np.testing.assert_array_equal(a.trace[m], b.trace[m], err_msg=m)
        assert (a.diagnosis is None) == (b.diagnosis is None)
    with RunStore(tmp_path / "ray.db") as st:  # streamed into the local store, as the local pool does
        runs = st.runs()
        assert len(runs) == 4 and all(r.status == "done" for r in runs)
        assert sorted(r.config["key"] for r in runs) == sorted(j.key() for j in jobs)


def test_a_failed_task_is_reported_the_others_finish_and_resume_skips_them(ray, tmp_path):
    good = tiny_grid()
    bad = Job(NetSpec(depth=2, width=8, in_shape=(5,), out_features=3), TrainConfig(max_steps=3), "spirals")
    path = tmp_path / "runs.db"
    with pytest.raises(GradDoctorError, match=r"1 of 5 runs failed \(4 finished and stored.*'.*': "
                                              r"GradDoctorError: .*takes \(5,\) -> 3 but spirals is \(2,\)"):
        run_jobs(good[:2] + [bad] + good[2:], path, progress_bar=False, backend="ray")
    with RunStore(path) as st:  # the sweep went on past the failure
        assert sorted(r.config["label"] for r in st.runs()) == sorted(j.label for j in good)
        stored = {r.config["key"]: r.id for r in st.runs()}
    again = run_jobs(good, path, resume=True, progress_bar=False, backend="ray")
    assert all(r.reused for r in again) and [r.run_id for r in again] == [stored[j.key()] for j in good]


def test_sweep_command_on_ray_then_resumed(ray, tmp_path, capsys, monkeypatch):
    need("matplotlib")  # sweep.png
    monkeypatch.setenv("COLUMNS", "200")  # one table row per line
    args = SWEEP + ["--store", str(tmp_path / "s.db"), "--out", str(tmp_path / "out"), "--backend", "ray"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Ray tasks on a local Ray instance" in out
    rows = [line for line in out.splitlines() if "depth " in line and "activation " in line]
    assert len(rows) == 4 and not any(line.split()[-1] == "reused" for line in rows)
    assert main(args + ["--resume"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "depth " in line and "activation " in line]
    assert len(rows) == 4 and all(line.split()[-1] == "reused" for line in rows)
    assert ray.is_initialized()  # the instance the caller started is left running


@pytest.mark.parametrize("extra, message", [
    (["--backend", "slurm"], "unknown backend 'slurm'; choose one of: local, ray"),
    (["--address", "head:6379"], "is for a Ray cluster: add backend='ray' (--backend ray)"),
])
def test_backend_errors_are_one_line(extra, message, tmp_path, capsys):
    assert main(SWEEP + ["--store", str(tmp_path / "e.db")] + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "e.db").exists()  # refused before anything ran


def test_lab_run_passes_the_backend_on(tmp_path, capsys):
    """`lab run` hands --backend/--address to the runner (refused there, before anything runs, without Ray)."""
    store = tmp_path / "lab.db"
    assert main(["lab", "run", "he2015", "--quick", "--seeds", "0", "--address", "head:6379", "--store",
                 str(store), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is for a Ray cluster: add backend='ray'" in err[0] and not store.exists()
