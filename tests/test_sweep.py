"""Grids and the sweep runner: cartesian expansion, worker processes, stored as finished, resume;
the `sweep` command."""
from __future__ import annotations

import math

import pytest
from conftest import need

from graddoctor.cli import main
from graddoctor.errors import GradDoctorError
from graddoctor.lab.grid import Job, axis, expand, probe_every
from graddoctor.lab.runner import KIND, execute, run_jobs
from graddoctor.nets import NetSpec
from graddoctor.store import RunStore
from graddoctor.training import TrainConfig

TINY = {"width": 8}  # 2-feature spirals, 3 classes: each run takes ~0.1 s
CONFIG = {"lr": 0.05, "max_steps": 12}


def tiny_grid(depths=(2, 3), acts=("relu", "tanh"), **kw) -> list[Job]:
    return expand(TINY, CONFIG, [axis("depth", "depth", depths), axis("act", "activation", acts)],
                  data="spirals", in_shape=(2,), out_features=3, records=4, **kw)


def test_expand_is_the_cartesian_product_in_order():
    jobs = tiny_grid()
    assert [j.label for j in jobs] == ["2, relu", "2, tanh", "3, relu", "3, tanh"]
    assert [(j.spec.depth, j.spec.activation) for j in jobs] == [(2, "relu"), (2, "tanh"), (3, "relu"), (3, "tanh")]
    assert all(j.config == TrainConfig(lr=0.05, max_steps=12) and j.spec.width == 8 for j in jobs)
    assert jobs[1].coord("act") == "tanh"


def test_callable_overrides_see_the_other_fields():
    jobs = expand({"residual": 2}, {}, [("arch", [("scaled", {"residual_scale": lambda p: 1 / p["depth"]})]),
                                         axis("depth", "depth", (4, 8))])
    assert [j.spec.residual_scale for j in jobs] == [0.25, 0.125]


def test_bad_grids_are_refused_with_the_fix():
    with pytest.raises(GradDoctorError, match=r"unknown field.*'colour'.*NetSpec or TrainConfig"):
        expand({}, {}, [("x", [("a", {"colour": 1})])])
    with pytest.raises(GradDoctorError, match="axis 'depth' has no values"):
        expand({}, {}, [("depth", [])])
    with pytest.raises(GradDoctorError, match="unknown activation"):
        expand({}, {}, [axis("a", "activation", ["sigmoidd"])])


def test_the_key_changes_with_anything_that_changes_the_result():
    a, b = tiny_grid()[:2]
    assert a.key() == tiny_grid()[0].key() and a.key() != b.key()
    assert Job(a.spec, a.config, "spirals", 4, "other").key() != a.key()  # another experiment's run
    assert probe_every(TrainConfig(max_steps=100), 10_000, 24) == 4
    assert probe_every(TrainConfig(epochs=2, batch_size=64), 1437, 4) == 11  # 46 steps


def test_execute_records_step_zero_and_every_kth_step():
    job = tiny_grid()[0]
    trace, hist, diag = execute(job)
    assert list(trace.steps) == [0, 3, 6, 9] and len(hist.step_loss) == 12
    assert diag is not None and trace.meta["label"] == job.label


def test_workers_store_every_run_in_job_order(tmp_path):
    jobs = tiny_grid()
    results = run_jobs(jobs, tmp_path / "runs.db", workers=2, progress_bar=False)
    assert [r.job for r in results] == jobs and not any(r.reused for r in results)
    with RunStore(tmp_path / "runs.db") as st:
        runs = st.runs(KIND)
        assert sorted(r.id for r in runs) == sorted(r.run_id for r in results)
        assert all(r.status == "done" and r.n_steps == 4 for r in runs)
        for res in results:  # what was sent back from the worker is what was stored
            back = st.load_trace(res.run_id)
            assert back.layer_names == res.trace.layer_names
            assert math.isclose(back["grad_norm"][-1, 0], res.trace["grad_norm"][-1, 0])
            assert st.get_run(res.run_id).config["key"] == res.job.key()


def test_a_failed_run_keeps_the_finished_ones_and_resume_finishes_the_rest(tmp_path):
    good = tiny_grid()
    bad = Job(NetSpec(depth=2, width=8, in_shape=(5,), out_features=3), TrainConfig(max_steps=3), "spirals")
    path = tmp_path / "runs.db"
    with pytest.raises(GradDoctorError, match=r"takes \(5,\) -> 3 but spirals is \(2,\)"):
        run_jobs(good[:2] + [bad] + good[2:], path, progress_bar=False)
    with RunStore(path) as st:
        assert [r.config["label"] for r in st.runs()] == ["2, relu", "2, tanh"]  # stored as they finished
    results = run_jobs(good, path, resume=True, progress_bar=False)
    assert [r.reused for r in results] == [True, True, False, False]
    again = run_jobs(good, path, resume=True, progress_bar=False)
    assert all(r.reused for r in again) and [r.run_id for r in again] == [r.run_id for r in results]
    assert again[0].history.step_loss == results[0].history.step_loss
    with RunStore(path) as st:
        assert len(st.runs()) == 4


def test_runner_arguments_are_checked(tmp_path):
    with pytest.raises(GradDoctorError, match="workers must be at least 1"):
        run_jobs(tiny_grid(), tmp_path / "x.db", workers=0)
    with pytest.raises(GradDoctorError, match="the grid is empty"):
        run_jobs([], tmp_path / "x.db")


SWEEP = ["sweep", "--depth", "2,3", "--activation", "relu,sigmoid", "--width", "8", "--data", "spirals",
         "--max-steps", "15", "--lr", "0.05"]


def test_sweep_command_runs_the_grid_sorts_and_resumes(tmp_path, capsys, monkeypatch):
    need("matplotlib")  # sweep.png
    monkeypatch.setenv("COLUMNS", "200")  # one table row per line
    args = SWEEP + ["--store", str(tmp_path / "s.db"), "--out", str(tmp_path / "out")]
    assert main(args) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if "depth " in line and "activation " in line]
    assert len(rows) == 4 and (tmp_path / "out" / "sweep.png").stat().st_size > 10_000
    accs = [float(line.split()[-2]) for line in rows]
    assert accs == sorted(accs, reverse=True)  # --sort acc (default): best first
    assert main(args + ["--resume", "--sort", "ratio"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if "depth " in line and "activation " in line]
    assert len(rows) == 4 and all(line.split()[-1] == "reused" for line in rows)
    ratios = [float(line.split()[-4]) for line in rows]
    assert ratios == sorted(ratios)  # most vanishing first
    with RunStore(tmp_path / "s.db") as st:
        assert len(st.runs()) == 4


@pytest.mark.parametrize("extra, message", [
    (["--sort", "speed"], "unknown --sort 'speed'; choose one of: acc, ratio, grid"),
    (["--activation", "relu,sigmoidd"], "unknown activation 'sigmoidd'"),
    (["--workers", "0"], "--workers must be at least 1"),
])
def test_sweep_errors_are_one_line(extra, message, tmp_path, capsys):
    assert main(SWEEP + ["--store", str(tmp_path / "e.db")] + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "e.db").exists()  # refused before anything ran


def test_sweep_lists_must_parse(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", "--depth", "5,x"])
    assert exit_.value.code == 2 and "not a list of int values: '5,x'" in capsys.readouterr().err
