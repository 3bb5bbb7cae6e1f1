"""RunStore: round trip, writing while training, kill -9, schema checks, CSV/TensorBoard export."""
from __future__ import annotations

import csv
import re
import select
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from fakeruns import planted_diagnosis, planted_history, planted_trace, spec_for

from graddoctor import data as data_mod
from graddoctor import nets
from graddoctor.cli import main
from graddoctor.errors import GradDoctorError
from graddoctor.probe.trace import LAYER_METRICS, STEP_METRICS
from graddoctor.report.csv_export import export_csv
from graddoctor.store import SCHEMA_VERSION, RunStore
from graddoctor.store.recorder import series_rows
from graddoctor.training import TrainConfig, train


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    same_nan = a.shape == b.shape and np.array_equal(np.isnan(a), np.isnan(b))
    return same_nan and np.allclose(a[~np.isnan(a)], b[~np.isnan(b)])


def test_round_trip_keeps_every_number(tmp_path):
    trace = planted_trace("vanishing", depth=6, steps=9)
    hist, diag = planted_history("vanishing", steps=9), planted_diagnosis(trace)
    with RunStore(tmp_path / "runs.db") as store:
        rid = store.save_run(spec_for("vanishing", 6), {"lr": 0.1}, trace, hist, diag)
        tid = store.add_treatment(rid, "relu", {"spec": {"activation": "relu"}}, True, 0.41, 0.93, 2.5)
        back = store.load_trace(rid)
        assert back.layers == trace.layers and back.meta == trace.meta
        assert np.array_equal(back.steps, trace.steps)
        for m in LAYER_METRICS + STEP_METRICS:
            assert _same(back[m], trace[m]), m
        assert store.load_history(rid) == hist
        assert store.load_diagnosis(rid).to_dict() == diag.to_dict()
        (info,) = store.runs()
        assert (info.status, info.verdict, info.final_acc, info.n_steps) == ("done", "vanishing", 0.1, 9)
        assert store.treatments(rid) == [{"id": tid, "remedy": "relu", "healthy": True, "loss": 0.41,
                                          "accuracy": 0.93, "seconds": 2.5, "payload": {"spec": {"activation": "relu"}},
                                          "created": store.treatments(rid)[0]["created"]}]


def test_recorder_commits_as_it_goes_and_readers_see_it(tmp_path):
    """Rows are visible to another connection after each commit, not before (commit_every=3)."""
    full = planted_trace("healthy", depth=3, steps=7)
    path = tmp_path / "runs.db"
    with RunStore(path) as writer, RunStore(path) as reader:
        rid = writer.start_run({"depth": 3}, {})
        live = full.select(slice(0, 0))
        rec = writer.recorder(rid, live, commit_every=3)
        seen = []
        for i in range(7):
            live.append(int(full.steps[i]), np.stack([full[m][i] for m in LAYER_METRICS], -1),
                        np.array([full[m][i] for m in STEP_METRICS]))
            rec(i, float(full["loss"][i]))
            seen.append(len(reader.load_trace(rid)))
        assert seen == [0, 0, 3, 3, 3, 6, 6]
        assert reader.get_run(rid).status == "running"  # this process is alive
        rec.flush()
        assert _same(reader.load_trace(rid)["delta_rms"], full["delta_rms"])


def test_recorder_with_real_training_and_failure(tmp_path):
    """on_step records every loss of a real run; an exception in the block marks the run failed."""
    data = data_mod.gaussians(n=200, dim=8, seed=0)
    spec = nets.NetSpec(depth=3, width=16, in_shape=data.in_shape, out_features=data.n_classes)
    with RunStore(tmp_path / "runs.db") as store:
        rid = store.start_run(spec.to_dict(), {"max_steps": 12})
        with store.recorder(rid) as rec:
            hist = train(nets.build(spec, seed=0), data, TrainConfig(max_steps=12, batch_size=32), on_step=rec,
                         progress_bar=False)
        store.finish_run(rid, "done", hist)
        assert store.load_history(rid).step_loss == hist.step_loss
        assert store.get_run(rid).final_acc == hist.val_acc[-1]
        rid2 = store.start_run({}, {})
        with pytest.raises(RuntimeError), store.recorder(rid2) as rec:
            rec(0, 2.0)
            raise RuntimeError("boom")
        assert store.get_run(rid2).status == "failed"
        assert store.load_history(rid2).step_loss == [2.0]  # flushed before marking


CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    from graddoctor import data as data_mod, nets
    from graddoctor.probe.trace import LAYER_METRICS, STEP_METRICS, LayerInfo, Trace
    from graddoctor.store import RunStore
    from graddoctor.training import TrainConfig, train

    data = data_mod.gaussians(n=400, dim=8, seed=0)
    spec = nets.NetSpec(depth=4, width=16, in_shape=data.in_shape, out_features=data.n_classes)
    model = nets.build(spec, seed=0)
    linears = [(n, m) for n, m in model.named_modules() if hasattr(m, "weight") and m.weight.dim() == 2]
    trace = Trace([LayerInfo(n, "Linear", m.weight.numel()) for n, m in linears])
    store = RunStore(sys.argv[1])
    rid = store.start_run(spec.to_dict(), {"max_steps": 10**6})
    rec = store.recorder(rid, trace, commit_every=1)

    def on_step(step, loss):  # the weight-gradient norms of every layer: a minimal probe
        lv = np.full((len(linears), len(LAYER_METRICS)), np.nan)
        g = np.array([float(m.weight.grad.norm()) for _, m in linears])
        lv[:, LAYER_METRICS.index("grad_norm")] = g
        lv[:, LAYER_METRICS.index("grad_rms")] = g / np.sqrt([m.weight.numel() for _, m in linears])
        trace.append(step, lv, np.array([loss] + [np.nan] * (len(STEP_METRICS) - 1)))
        rec(step, loss)
        print("committed", step, flush=True)

    train(model, data, TrainConfig(max_steps=10**6, batch_size=16), on_step=on_step, progress_bar=False)
""")


def test_kill_9_leaves_a_readable_partial_run_listed_as_interrupted(tmp_path):
    path = tmp_path / "runs.db"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        deadline, last = time.time() + 60, -1
        while last < 5:  # the child keeps printing (10**6 steps), so select never waits on buffered lines
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.time()))
            assert ready, "the child recorded fewer than 6 steps in 60 s"
            line = proc.stdout.readline()
            assert line, "the child exited before recording 6 steps"
            last = int(line.split()[1])
        with RunStore(path) as store:
            assert store.runs()[0].status == "running"  # writer alive
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    with RunStore(path) as store:
        (info,) = store.runs()
        assert info.status == "interrupted" and info.n_steps >= 6
        trace = store.load_trace(info.id)
        assert len(trace) == info.n_steps and trace.steps.tolist() == list(range(len(trace)))
        assert np.isfinite(trace["grad_rms"]).all() and (trace["grad_rms"] > 0).all()
        assert len(store.load_history(info.id).step_loss) == len(trace)
        assert store._db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        store.save_run({}, {}, planted_trace(steps=2))  # and the file takes new runs
        assert [r.status for r in store.runs()] == ["interrupted", "done"]


def test_schema_checks_give_clear_errors(tmp_path):
    newer = tmp_path / "newer.db"
    RunStore(newer).close()
    with sqlite3.connect(newer) as db:
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(GradDoctorError, match="newer than this graddoctor"):
        RunStore(newer)
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE t (x)")
    with pytest.raises(GradDoctorError, match="not a graddoctor run store"):
        RunStore(foreign)
    (tmp_path / "text.db").write_text("hello, not a database " * 100)
    with pytest.raises(GradDoctorError, match="not a graddoctor run store"):
        RunStore(tmp_path / "text.db")
    with pytest.raises(GradDoctorError, match="no run store at"):
        RunStore(tmp_path / "missing.db", create=False)
    with RunStore(tmp_path / "ok.db") as store, pytest.raises(GradDoctorError, match="no run 7"):
        store.load_trace(7)


def test_a_metric_added_later_becomes_a_column_and_old_rows_read_nan(tmp_path):
    path = tmp_path / "runs.db"
    with RunStore(path) as store:
        rid = store.save_run({}, {}, planted_trace(steps=3))
    with sqlite3.connect(path) as db:  # a store written before 'nonfinite_act' existed
        db.execute("ALTER TABLE layer_stats DROP COLUMN nonfinite_act")
    with RunStore(path) as store:
        back = store.load_trace(rid)
        assert np.isnan(back["nonfinite_act"]).all() and np.isfinite(back["grad_rms"]).all()


def test_cli_runs_and_csv_export(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # one table row per line
    path = tmp_path / "runs.db"
    trace = planted_trace("vanishing", depth=4, steps=5)
    with RunStore(path) as store:
        rid = store.save_run(spec_for("vanishing", 4), {}, trace, planted_history(steps=5), planted_diagnosis(trace))
        store.add_treatment(rid, "relu", {}, True, 0.4, 0.9, 1.0)
    assert main(["runs", "--store", str(path)]) == 0
    out = capsys.readouterr().out
    # the stored run's row: id, time, its network, status, verdict, val acc, steps
    row = r"^\s*1\s+\S+ \S+\s+4x32 sigmoid mlp, init=xavier_normal, bn=none\s+done\s+vanishing\s+0\.100\s+5$"
    assert re.search(row, out, re.M), out
    assert main(["export", "last", "--store", str(path), "--csv", str(tmp_path / "csv")]) == 0
    read = lambda name: list(csv.DictReader((tmp_path / "csv" / name).read_text().splitlines()))
    rows = read("layer_stats.csv")
    assert len(rows) == 5 * 5 and rows[0]["layer"] == "body.0.linear" and rows[0]["saturated"] == ""
    assert float(rows[6]["delta_rms"]) == pytest.approx(trace["delta_rms"][1, 1])
    assert read("treatments.csv")[0]["remedy"] == "relu"
    assert len(read("history.csv")) == 3
    assert sorted(p.name for p in export_csv(RunStore(path), rid, tmp_path / "c2")) == sorted(
        p.name for p in (tmp_path / "csv").iterdir())


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys, monkeypatch):
    path = tmp_path / "runs.db"
    with RunStore(path) as store:
        store.save_run({}, {}, planted_trace(steps=2))
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    for argv, msg in ((["runs", "--store", str(tmp_path / "none.db")], "no run store at"),
                      (["export", "1", "--store", str(path)], "--csv DIR and/or --tensorboard DIR"),
                      (["export", "x", "--store", str(path), "--csv", "d"], "RUN must be a run id"),
                      (["export", "1", "--store", str(path), "--tensorboard", str(tmp_path / "tb")],
                       "pip install tensorboard")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, err


def test_end_to_end_with_the_real_probe_and_diagnosis(tmp_path):
    """watch() + train(on_step=recorder) + diagnose(): what the store gives back is what was measured."""
    from graddoctor import diagnose
    from graddoctor.probe.probe import watch

    data = data_mod.digits(seed=0)
    spec = nets.NetSpec(depth=10, width=32, in_shape=data.in_shape, out_features=10, activation="sigmoid",
                        init="xavier_normal")
    model = nets.build(spec, seed=0)
    cfg = TrainConfig(max_steps=25, batch_size=64, lr=0.05)
    with RunStore(tmp_path / "runs.db") as store:
        rid = store.start_run(spec.to_dict(), cfg.to_dict())
        with watch(model) as probe, store.recorder(rid, probe.trace) as rec:
            hist = train(model, data, cfg, probe=probe, on_step=rec, progress_bar=False)
        diag = diagnose(probe.trace)
        store.finish_run(rid, "done", hist, diag)
    with RunStore(tmp_path / "runs.db", create=False) as store:
        back, info = store.load_trace(rid), store.get_run(rid)
        assert len(back) == 25 and back.layers == probe.trace.layers and back.meta == probe.trace.meta
        for m in LAYER_METRICS + STEP_METRICS:
            assert _same(back[m], probe.trace[m]), m
        assert store.load_diagnosis(rid).to_dict() == diag.to_dict()
        assert diagnose(back).to_dict() == diag.to_dict()  # the stored trace judges the same
        assert info.verdict == ("healthy" if diag.healthy else ", ".join(sorted(diag.kinds())))
        assert store.load_history(rid).step_loss == hist.step_loss


def test_tensorboard_events_carry_every_finite_statistic():
    """What `export --tensorboard` writes (pure part; writing itself needs the tensorboard package)."""
    from graddoctor.report.tensorboard import HISTOGRAM_METRICS, SCALAR_METRICS, STEP_SCALARS, events

    trace = planted_trace("vanishing", depth=3, steps=4)
    ev = list(events(trace))
    scalars = {(tag, step): v for kind, tag, v, step in ev if kind == "scalar"}
    hists = [(tag, v, step) for kind, tag, v, step in ev if kind == "histogram"]
    assert scalars[("delta_rms/02 body.1.linear", 3)] == trace["delta_rms"][3, 1]
    assert scalars[("run/loss", 0)] == 2.30
    assert ("saturated/01 body.0.linear", 0) not in scalars  # nan: not measured, not written
    n_layers, n_steps = 4, 4
    # planted runs do not measure update_ratio, nor saturated/dead for the first layer (its input is data)
    per_step = len(STEP_SCALARS) + n_layers * (len(SCALAR_METRICS) - 1) - 2
    assert len(scalars) == n_steps * per_step == 64
    assert len(hists) == n_steps * len(HISTOGRAM_METRICS)
    np.testing.assert_allclose(hists[0][1], np.log10(trace["grad_rms"][0]))


# -- schema versions and Trace.series ---------------------------------------------------------
V1_DUMP = Path(__file__).parent / "data" / "store_v1.sql"


def _series_of(trace) -> dict:
    """(name, layer) -> {step: values} in key order: everything Trace.series holds (read via its .npz form)."""
    out: dict = {}
    for name, layer, step, values in series_rows(trace.series):
        out.setdefault((name, layer), {})[step] = values.tolist()
    return out


def test_a_version_1_store_is_upgraded_in_place_and_still_reads(tmp_path):
    """tests/data/store_v1.sql is a file the old store.py wrote; opening it migrates it to the new schema."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript(V1_DUMP.read_text())
        assert db.execute("PRAGMA user_version").fetchone() == (1,)
        assert "series" not in {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
    planted = planted_trace("vanishing", depth=3, steps=3)  # what the dump was written from
    with RunStore(path, create=False) as store:
        assert store._db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,) and SCHEMA_VERSION == 2
        (info,) = store.runs()
        assert (info.status, info.verdict, info.n_steps, info.final_acc) == ("done", "vanishing", 3, 0.1)
        back = store.load_trace(info.id)
        assert back.layers == planted.layers and len(back.series) == 0
        for m in LAYER_METRICS + STEP_METRICS:
            assert _same(back[m], planted[m]), m
        assert store.load_history(info.id) == planted_history(steps=3)
        assert store.load_diagnosis(info.id).to_dict() == planted_diagnosis(planted).to_dict()
        assert store.treatments(info.id)[0]["accuracy"] == 0.93
        trace = planted_trace("healthy", depth=2, steps=2)
        trace.series.add("time_input_grad", "head", 1, np.array([0.5, 0.25]))
        rid = store.save_run({}, {}, trace)  # the upgraded file takes new runs, with series
    with RunStore(path) as store:  # opened again: already current, nothing to do
        assert _series_of(store.load_trace(rid)) == {("time_input_grad", "head"): {1: [0.5, 0.25]}}
        assert [r.id for r in store.runs()] == [info.id, rid]


def test_series_of_any_name_round_trip_with_exact_lengths_and_non_finite_values(tmp_path):
    """Series are stored generically: any name, per-step lengths that vary, nan/inf kept, key order kept."""
    trace = planted_trace("healthy", depth=3, steps=4)
    rng = np.random.default_rng(0)
    for s in trace.steps.tolist():
        trace.series.add("block_delta", "body.2.linear", s, rng.normal(size=3 + s))  # lengths 3..6
        trace.series.add("time_input_grad", "body.0.linear", s, [np.nan, np.inf, -1e-300, 1e300][: s + 1])
    trace.series.add("block_delta", "body.1.linear", 3, np.array([]))  # an empty entry
    with RunStore(tmp_path / "runs.db") as store:
        rid = store.save_run({}, {}, trace)
        back = store.load_trace(rid)
        export_csv(store, rid, tmp_path / "csv")
    got, want = _series_of(back), _series_of(trace)
    assert list(got) == list(want) == [("block_delta", "body.2.linear"), ("time_input_grad", "body.0.linear"),
                                       ("block_delta", "body.1.linear")]
    for key in want:
        assert got[key].keys() == want[key].keys()
        for s in want[key]:
            np.testing.assert_array_equal(got[key][s], want[key][s])  # nan == nan here, bit-exact otherwise
    assert len(back.series.get("block_delta", "body.2.linear")[1][2]) == 6  # step 2: 5 values, nan-padded to 6
    rows = list(csv.DictReader((tmp_path / "csv" / "series.csv").read_text().splitlines()))
    assert len(rows) == (3 + 4 + 5 + 6) + (1 + 2 + 3 + 4)  # one row per value; the empty entry has none
    assert rows[-1] == {"series": "time_input_grad", "layer": "body.0.linear", "step": "3", "index": "3",
                        "value": "1e+300"}


def test_recorder_writes_series_and_metadata_as_they_grow(tmp_path):
    full = planted_trace("healthy", depth=2, steps=5)
    path = tmp_path / "runs.db"
    with RunStore(path) as writer, RunStore(path) as reader:
        rid = writer.start_run({}, {})
        live = full.select(slice(0, 0))
        with writer.recorder(rid, live, commit_every=2) as rec:
            for i in range(5):
                live.series.add("time_input_grad", "head", i, [float(i), 1.0])
                live.append(int(full.steps[i]), np.stack([full[m][i] for m in LAYER_METRICS], -1),
                            np.array([full[m][i] for m in STEP_METRICS]))
                rec(i, float(full["loss"][i]))
                if i == 3:
                    assert sorted(_series_of(reader.load_trace(rid))[("time_input_grad", "head")]) == [0, 1, 2, 3]
                if i == 1:  # metadata the probe learns while training (blocks seen, a first non-finite step)
                    live.meta["blocks"] = ["body.0"]
            live.series.add("time_input_grad", "head", 0, [9.0])  # replaces an entry already written
            live.series.add("late", "head", 1, [7.0])  # a new series at a step already written
            live.series.add("block_delta_rms", "", 4, [0.5, 0.25])  # a model-level series (layer key "")
            live.meta["nonfinite"] = {"first_step": 4, "what": "loss"}
        back = reader.load_trace(rid)
    series = _series_of(back)
    assert series[("time_input_grad", "head")] == {0: [9.0], **{i: [float(i), 1.0] for i in range(1, 5)}}
    assert series[("late", "head")] == {1: [7.0]} and series[("block_delta_rms", "")] == {4: [0.5, 0.25]}
    assert back.meta == {**full.meta, "blocks": ["body.0"], "nonfinite": {"first_step": 4, "what": "loss"}}


def test_an_rnn_run_reloaded_from_the_store_keeps_its_through_time_data(tmp_path):
    """The real probe on an nn.RNN: the per-time-step series come back, and the store's trace judges the same."""
    import torch
    from torch import nn

    from graddoctor import diagnose
    from graddoctor.probe.probe import watch

    torch.manual_seed(0)
    rnn, head = nn.RNN(3, 8, batch_first=True), nn.Linear(8, 1)
    model = nn.ModuleDict({"rnn": rnn, "head": head})
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(4, 30, 3), torch.randn(4, 1)
    with RunStore(tmp_path / "runs.db") as store:
        rid = store.start_run({"model": "rnn"}, {})
        with watch(model, optimizer=opt) as probe, store.recorder(rid, probe.trace) as rec:
            for step in range(4):
                loss = (head(rnn(x)[0][:, -1]) - y).square().mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                probe.step(loss)
                rec(step, loss.item())
        store.finish_run(rid, "done", diagnosis=diagnose(probe.trace))
        back = store.load_trace(rid)
    assert {name for name, _, _, _ in series_rows(probe.trace.series)} == {"time_input_grad", "time_output_grad"}
    assert _series_of(back) == _series_of(probe.trace)
    assert len(back.series.get("time_input_grad", "rnn")[1][0]) == 30  # one value per time step
    assert diagnose(back).to_dict() == diagnose(probe.trace).to_dict()
