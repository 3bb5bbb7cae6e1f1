"""The HTML report: content, escaping, self-containment, and a real browser (headless Chromium)."""
from __future__ import annotations

import base64
import html
import json
import re
import subprocess

import numpy as np
import pytest
from conftest import need, need_program
from fakeruns import XSS, planted_diagnosis, planted_history, planted_trace, spec_for

from graddoctor.cli import main
from graddoctor.report.html import write_report
from graddoctor.store import RunStore

need("jinja2")
need("matplotlib")

DEPTH = 6
# Flags for a quiet, offline, throw-away headless Chromium (no network of its own, no profile).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--enable-logging=stderr", "--v=0"]
# Appended to a copy of the report: after load, write what the browser decoded and laid out into
# the title, which --dump-dom then shows (the report itself has no script; its policy forbids one).
PROBE_JS = """<script>window.addEventListener('load', () => { document.title = 'IMAGES ' +
  JSON.stringify([...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight,
  Math.round(i.getBoundingClientRect().width), Math.round(i.getBoundingClientRect().height)])); });</script>"""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A vanishing run whose first layer is named like an XSS payload, with a treatment and a comparison."""
    path = tmp_path_factory.mktemp("store") / "runs.db"
    with RunStore(path) as st:
        t = planted_trace("vanishing", depth=DEPTH, steps=10, first_name=XSS)
        d = planted_diagnosis(t)
        d.context["structure"] = {"summary": f"chain of {DEPTH + 1} layers from {XSS}"}  # what diag adds
        rid = st.save_run(spec_for("vanishing", DEPTH), {"lr": 0.1, "note": XSS}, t, planted_history(steps=10), d)
        st.add_treatment(rid, "relu+he_init", {"history": planted_history("healthy", steps=10).to_dict()},
                         True, 0.31, 0.947, 3.2)
        st.add_treatment(rid, "clip_gradients", {}, False, 2.3, 0.11, 3.0)
        h = planted_trace("healthy", depth=DEPTH, steps=10)
        st.save_run(spec_for("healthy", DEPTH), {}, h, planted_history("healthy", steps=10),
                    planted_diagnosis(h, "healthy"))
        st.start_run({"depth": 2}, {})  # still 'running' (this process), no steps
    return path


@pytest.fixture(scope="module")
def report(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report.html"
    with RunStore(store) as st:
        write_report(st, 1, out, compare=(2,))
    return out


def test_report_shows_verdict_findings_layers_and_treatments(report):
    text = report.read_text()
    assert "<title>graddoctor report: run #1</title>" in text
    assert "UNHEALTHY (vanishing): the error signal shrinks 4x per layer" in text
    assert "saturating activation</b>: median gain per layer 0.25" in text
    assert "<code>relu</code>, <code>he_init</code>" in text
    assert "evidence: decades = 5.4</p>" in text  # short evidence inline, per-layer evidence folded:
    assert f"<summary>signal_decades ({DEPTH + 1} values)</summary>" in text and ">-3.6</td>" in text
    rows = re.findall(r"<tr><td>(\d+)</td>", text)
    assert rows == [str(i) for i in range(1, DEPTH + 2)]  # one per layer, forward order
    assert "relu+he_init" in text and "0.947" in text and "clip_gradients" in text
    assert len(re.findall(r'<figure id="fig-', text)) == 5
    assert f'<p class="meta" id="structure">structure: chain of {DEPTH + 1} layers from {html.escape(XSS)}</p>' in text


def test_names_from_the_model_are_text_never_markup(report):
    text = report.read_text()
    assert XSS not in text and "<script" not in text.lower()
    assert html.escape(XSS) in text  # the layer name, shown as text (table, findings, config)
    assert text.count(html.escape(XSS)) >= 3


def test_report_is_self_contained(report):
    text = report.read_text()
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', text)
    assert refs and all(r.startswith("data:image/png;base64,") for r in refs)
    assert "url(" not in text and "@import" not in text
    for r in refs:
        assert base64.b64decode(r.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    # (the content security policy: enforced in a real browser, see test_the_page_policy_blocks_scripts...)


def test_healthy_undiagnosed_and_partial_runs(store, tmp_path):
    with RunStore(store) as st:
        healthy = write_report(st, 2, tmp_path / "h.html").read_text()
        partial = write_report(st, 3, tmp_path / "p.html").read_text()
    assert "HEALTHY: gradients flow through every layer." in healthy and 'id="treatments"' not in healthy
    assert "Not diagnosed" in partial and 'id="partial"' in partial and "<b>running</b>" in partial
    assert len(re.findall(r'<figure id="fig-', partial)) == 2  # no steps: activations + training only


def test_cli_report_writes_html_and_figures(store, tmp_path, capsys):
    out, figs = tmp_path / "r.html", tmp_path / "figs"
    assert main(["report", "1", "--store", str(store), "--out", str(out), "--figures", str(figs),
                 "--compare", "2"]) == 0
    assert f"report: {out}" in capsys.readouterr().out
    assert out.stat().st_size > 50_000 and len(list(figs.glob("*.png"))) == 5 and len(list(figs.glob("*.svg"))) == 5
    assert main(["report", "99", "--store", str(store)]) == 2
    assert "no run 99" in capsys.readouterr().err


# -- in a real browser ---------------------------------------------------------------------
def _chromium() -> str:
    """Fails under CI=true when chromium is missing (.ci/run installs it), skips elsewhere."""
    return need_program("chromium", "chromium-browser")


def _browse(page, tmp_path, *extra: str) -> tuple[str, str]:
    """(DOM after load, stderr) of a headless Chromium visit to a file."""
    cmd = [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *extra, "--dump-dom",
           page.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, done.stderr


def test_report_renders_in_headless_chromium(report, tmp_path):
    shot = tmp_path / "shot.png"
    dom, log = _browse(report, tmp_path, f"--screenshot={shot}", "--window-size=1200,2000")
    console = [ln for ln in log.splitlines() if ":CONSOLE" in ln]  # errors, CSP violations, anything
    assert console == [], console
    assert "<title>graddoctor report: run #1</title>" in dom
    assert html.escape(XSS) in dom and "<script" not in dom.lower()  # still text after parsing
    from matplotlib.image import imread

    px = imread(shot)[..., :3]
    assert px.shape[:2] == (2000, 1200)
    background = np.all(np.abs(px - px[5, 5]) < 0.02, axis=-1)
    assert 0.05 < 1 - background.mean() < 0.95  # something drawn, not one flat colour
    assert len(np.unique((px * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 200  # figures, not just text


def _probe(report, tmp_path, allow_scripts: bool) -> str:
    """The DOM after load of a copy of the report with PROBE_JS added (and allowed by its policy, or not)."""
    page = tmp_path / "probed.html"
    text = report.read_text()
    if allow_scripts:
        text = text.replace("style-src 'unsafe-inline'", "style-src 'unsafe-inline'; script-src 'unsafe-inline'")
    page.write_text(text.replace("</body>", PROBE_JS + "</body>"))
    return _browse(page, tmp_path, "--window-size=1200,900", "--virtual-time-budget=5000")[0]


def test_the_page_policy_blocks_scripts_that_the_report_might_carry(report, tmp_path):
    """The report's own Content-Security-Policy, unchanged: the probe script (which runs when the policy
    allows it, next test) must not run, so the title stays the report's."""
    dom = _probe(report, tmp_path, allow_scripts=False)
    assert "window.addEventListener('load'" in dom  # the script is on the page ...
    assert re.findall(r"<title>(.*?)</title>", dom) == ["graddoctor report: run #1"]  # ... and did not run


def test_every_figure_decodes_with_a_nonzero_size_in_chromium(report, tmp_path):
    dom = _probe(report, tmp_path, allow_scripts=True)
    found = re.search(r"<title>IMAGES (.*?)</title>", dom)
    assert found, "the probe script did not run: " + dom[:300]
    images = json.loads(html.unescape(found.group(1)))
    assert len(images) == 5
    for complete, nw, nh, w, h in images:
        assert complete and nw > 300 and nh > 150 and w > 300 and h > 100


def test_a_real_module_named_like_a_script_tag_is_shown_as_text(tmp_path):
    """The name travels model -> probe -> store -> report; it must arrive as text."""
    from collections import OrderedDict

    from torch import nn

    from graddoctor import data as data_mod
    from graddoctor import diagnose, watch
    from graddoctor.training import TrainConfig, train

    data = data_mod.digits(seed=0)
    model = nn.Sequential(OrderedDict([(XSS, nn.Linear(64, 32)), ("act", nn.Sigmoid()), ("head", nn.Linear(32, 10))]))
    cfg = TrainConfig(max_steps=6, batch_size=32)
    with RunStore(tmp_path / "runs.db") as st:
        rid = st.start_run({"model": XSS}, cfg.to_dict())
        with watch(model) as probe, st.recorder(rid, probe.trace) as rec:
            hist = train(model, data, cfg, probe=probe, on_step=rec, progress_bar=False)
        st.finish_run(rid, "done", hist, diagnose(probe.trace))
        assert st.load_trace(rid).layer_names == [XSS, "head"]
        text = write_report(st, rid, tmp_path / "r.html").read_text()
    assert XSS not in text and "<script" not in text.lower()
    assert f'<td class="text">{html.escape(XSS)}</td>' in text  # the per-layer table row
