"""The terminal report at any width: golden files at 80 and 160 columns and in a pipe, plus invariants
(every number of the table present in full on its row, names whole, nothing cut, nothing over the width).

Regenerate the golden files after an intended change with:
    UPDATE_GOLDEN=1 pytest tests/test_terminal.py
and read the diff before committing it.
"""
from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import pytest
from rich.console import Console

from graddoctor.cli import main
from graddoctor.diagnose.findings import Diagnosis
from graddoctor.report.columns import BAR, COLUMNS, JUDGED, cells, fit
from graddoctor.report.terminal import output_width, print_diagnosis, render_text

GOLDEN = Path(__file__).parent / "golden"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "models.py"
# A real checkup of examples/models.py:deep_sigmoid with its layers renamed like a transformer's
# (names of 7 to 37 characters), a three-digit exponent, a gain of 1.5e4 and a structure line.
FIXTURE = Diagnosis.from_dict(json.loads((GOLDEN / "diagnosis.json").read_text()))
ROWS = FIXTURE.context["table"]


def blocks_fixture() -> Diagnosis:
    """A real diagnosis of a ConvNeXt (2 stages of 2 blocks, LayerScale 1e-6) at init: diagnosis_blocks.json
    (to remake it after an intended change: delete the file, run with UPDATE_GOLDEN=1, read the diff)."""
    import torch
    import transformers as T

    import graddoctor as gd

    torch.manual_seed(0)
    model = T.ConvNextForImageClassification(T.ConvNextConfig(hidden_sizes=[8, 16], depths=[2, 2], num_labels=4,
                                                              num_stages=2, image_size=32))
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with gd.watch(model) as probe:
        loss = model(pixel_values=x, labels=torch.arange(4)).loss
        loss.backward()
        probe.step(loss)
    return gd.diagnose(probe.trace)


# A network of blocks: the verdict's own comparisons (judged, vs) and the depth axis.
if os.environ.get("UPDATE_GOLDEN") and not (GOLDEN / "diagnosis_blocks.json").exists():
    (GOLDEN / "diagnosis_blocks.json").write_text(json.dumps(blocks_fixture().to_dict(), indent=1) + "\n")
BLOCKS = Diagnosis.from_dict(json.loads((GOLDEN / "diagnosis_blocks.json").read_text()))
FIXTURES = {"chain": FIXTURE, "blocks": BLOCKS}


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"{path} is missing: run UPDATE_GOLDEN=1 pytest {__file__}"
    assert text == path.read_text(), f"{name} changed: compare, and regenerate with UPDATE_GOLDEN=1"


@pytest.mark.parametrize("width", [80, 160, None], ids=["80", "160", "pipe"])
@pytest.mark.parametrize("fixture", FIXTURES)
def test_golden_output(width, fixture):
    prefix = "diagnosis" if fixture == "chain" else "diagnosis_blocks"
    _golden(f"{prefix}_{width or 'pipe'}.txt", render_text(FIXTURES[fixture], width))


@pytest.mark.parametrize("fixture", FIXTURES)
def test_golden_output_wide(fixture):
    prefix = "diagnosis" if fixture == "chain" else "diagnosis_blocks"
    _golden(f"{prefix}_wide.txt", render_text(FIXTURES[fixture], None, wide=True))


def test_a_network_of_blocks_shows_what_the_verdict_judged():
    """The judged column and the depth-axis line hold the verdict's own numbers; a chain shows neither."""
    text = render_text(BLOCKS, None)
    assert "judged" in _table(text)[0] and "vs" in _table(text)[0]
    rows = {r["name"]: r for r in BLOCKS.context["table"]}
    scale = next(f for f in BLOCKS.findings if f.evidence.get("pattern") == "branch_scale")
    exits = [r for r in rows.values() if r["compared_with"] == r["block"] and r["block"]]
    assert len(exits) == 4  # each block's branch exit (pwconv2), against its block's output: the LayerScale
    assert all(f"{r['judged_decades']:+.1f}" == f"{scale.evidence['exit_decades']:+.1f}" for r in exits)
    line = next(ln for ln in " ".join(text.split("\n")).split("depth axis: ")[1:])
    blocks = [b for b in BLOCKS.context["structure"]["blocks"]]
    cells = [f"{'.'.join(b['name'].split('.')[-3::2])}:{b['signal_decades']:+.1f}" for b in blocks]
    assert " ".join(cells[:2] + ["|"] + cells[2:]) in " ".join(line.split())  # one stage transition
    chain = render_text(FIXTURE, None)
    assert "judged" not in _table(chain)[0] and "depth axis" not in chain


def _table(text: str) -> tuple[list[str], list[str]]:
    """(header line, table body lines) of the per-layer table in a rendered report."""
    lines = text.splitlines()
    h = next(i for i, line in enumerate(lines) if re.match(r"\s*# +layer", line))
    end = next(i for i in range(h + 2, len(lines))
               if not lines[i].strip() or lines[i].startswith(("left", "depth axis", "╭")))
    return lines[h], lines[h + 2: end]


TEXT = ("layer", "type", "activation", "vs", BAR)  # the columns that are not numbers


def _check(text: str, width: int | None, wide: bool, rows: list[dict] = ROWS) -> list[str]:
    """Assert the invariants; returns the headers shown."""
    header, body = _table(text)
    shown = [c.header for c in COLUMNS if re.search(rf"(^|\s){re.escape(c.header)}(\s|$)", header)]
    judged = ["judged"] if "judged" in shown else []
    assert shown == [c.header for c in COLUMNS if c.header not in fit(rows, width, wide).hidden
                     and (c.header not in JUDGED or judged)]
    assert {"#", "layer", "grad RMS", "signal", *judged} <= set(shown)  # never dropped
    assert "…" not in text and "..." not in text.replace("' .. '", "")
    texts = cells(rows)
    starts = [i for i, line in enumerate(body) if re.match(r"\s*\d+ ", line)]
    assert len(starts) == len(rows)
    lo = header.index("layer")  # left-justified: the column starts with its header
    hi = lo + next(c.width for c in fit(rows, width, wide).table.columns if c.header == "layer")
    for k, (row, i) in enumerate(zip(rows, starts)):
        first = body[i]
        numbers = [texts[h][k] for h in shown if h not in TEXT]
        tokens = first[:lo].split() + first[hi:].split()
        words = {texts[h][k] for h in ("type", "activation", "vs")}  # the text columns
        got = [t for t in tokens if t not in words and not set(t) <= set("▼▲█")]
        assert got == [n for n in numbers if n], (width, first)  # every number, whole, in its row, in order
        if "vs" in shown:
            assert texts["vs"][k] in first[hi:]  # whole
        stop = starts[k + 1] if k + 1 < len(starts) else len(body)
        assert "".join(line[lo:hi].strip() for line in body[i:stop]) == row["name"]  # names fold, never cut
    if width is not None and width >= 60:
        assert max(len(line) for line in text.splitlines()) <= width
    hidden = fit(rows, width, wide).hidden
    assert ("all columns: --wide" in " ".join(text.split())) == bool(hidden)  # (the line may wrap)
    return shown


@pytest.mark.parametrize("fixture", FIXTURES)
@pytest.mark.parametrize("wide", [False, True], ids=["default", "wide"])
def test_every_number_survives_every_width(wide, fixture):
    d = FIXTURES[fixture]
    seen = set()
    for width in [*range(40, 201, 8), None]:
        seen.add(tuple(_check(render_text(d, width, wide), None if wide else width, wide, d.context["table"])))
    assert len(seen) >= (1 if wide else 4)  # columns really go and come back as the width changes


def test_columns_go_in_their_order_and_only_when_the_width_is_short():
    widest = {}  # header -> the widest width at which it is left out
    for w in range(200, 39, -2):
        for h in fit(ROWS, w).hidden:
            widest.setdefault(h, w)
    assert [h for h, w in widest.items() if w == 200] == ["activation", "update ratio", "input std"]  # wide-only
    gone = [widest.get(h, 0) for h in (BAR, "type", "dead", "sat", "gain")]
    assert gone == sorted(gone, reverse=True) and gone[0] < 200 and gone[3] > 40  # in drop order, all but gain
    assert widest[BAR] >= 80  # at 80 columns the bar is the first thing to go
    assert not {"#", "layer", "grad RMS", "signal"} & set(widest)


def test_the_width_comes_from_the_terminal_then_columns_else_natural(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    pipe = Console(file=io.StringIO(), width=80)  # a pipe: rich would assume 80 columns
    assert output_width(pipe) is None
    assert output_width(Console(file=io.StringIO(), force_terminal=True, width=72)) == 72
    assert output_width(Console(file=io.StringIO(), force_terminal=True, width=72), wide=True) is None
    monkeypatch.setenv("COLUMNS", "100")
    assert output_width(Console(file=io.StringIO())) == 100
    monkeypatch.delenv("COLUMNS")
    print_diagnosis(FIXTURE, pipe)
    assert pipe.file.getvalue() == render_text(FIXTURE, None)  # a pipe gets the natural width, uncut
    term = Console(file=io.StringIO(), force_terminal=True, width=80, color_system=None)
    print_diagnosis(FIXTURE, term)
    assert term.file.getvalue() == render_text(FIXTURE, 80)


def test_structure_line_only_when_the_diagnosis_has_one():
    assert "structure: chain of 21 layers" in render_text(FIXTURE, 80)
    bare = Diagnosis(FIXTURE.findings, FIXTURE.layers, {k: v for k, v in FIXTURE.context.items() if k != "structure"})
    assert "structure:" not in render_text(bare, 80)


def test_check_at_80_columns_in_a_pipe_keeps_every_exponent(monkeypatch, capsys):
    """The real command, as a CI log or `| less` with COLUMNS=80 sees it; and --wide adds the wide columns."""
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["check", f"{EXAMPLES}:deep_sigmoid", "--input-shape", "64"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80 and "…" not in out
    exponents = re.findall(r"\b\d\.\d\de-\d\d\b", "\n".join(_table(out)[1]))
    assert len(exponents) == 21  # one grad RMS per layer, each with its full exponent
    assert "all columns: --wide" in " ".join(out.split())
    assert main(["check", f"{EXAMPLES}:deep_sigmoid", "--input-shape", "64", "--wide"]) == 0
    wide = capsys.readouterr().out
    assert "update ratio" in _table(wide)[0] and "left out" not in wide


def test_the_width_fit_computes_is_the_width_rich_draws():
    """fit() adds up column widths itself (fast); rich's own measurement of the table agrees."""
    from rich.measure import Measurement

    console = Console(width=1000, file=io.StringIO())
    for width in (40, 64, 80, 100, 160, None):
        for wide in (False, True):
            f = fit(ROWS, width, wide)
            assert Measurement.get(console, console.options, f.table).maximum == f.width, (width, wide)


def test_runs_listing_keeps_every_number_in_a_pipe_and_in_a_narrow_terminal(tmp_path, monkeypatch):
    """`graddoctor runs`: a pipe gets the natural width; 40 columns fold the text columns, never cut a number."""
    from fakeruns import planted_trace

    from graddoctor.cli.runs import runs_table
    from graddoctor.report.terminal import print_uncut
    from graddoctor.store import RunStore
    from graddoctor.training import History

    spec = {"kind": "mlp", "depth": 20, "width": 64, "activation": "sigmoid", "init": "xavier_normal",
            "in_shape": [64], "out_features": 10}
    with RunStore(tmp_path / "runs.db") as store:
        for _ in range(2):
            store.save_run(spec, {}, planted_trace(steps=3), History(val_acc=[0.123456]))
        rows = store.runs()
    monkeypatch.delenv("COLUMNS", raising=False)
    for console in (Console(file=io.StringIO(), width=80),  # a pipe
                    Console(file=io.StringIO(), force_terminal=True, width=40, color_system=None)):
        print_uncut(console, runs_table(rows, "runs.db"))
        out = console.file.getvalue()
        assert "…" not in out and out.count("0.123") == 2 and re.search(r"^\s*1\s", out, re.M)
        assert len(re.findall(r"\d{4}-\d\d-\d\d \d\d:\d\d", out)) == 2  # the time, whole
        assert ("init=xavier_normal" in out) != console.is_terminal  # 40 columns: the network folds


def test_the_theory_line_names_the_theory_that_made_the_prediction():
    """A BatchNorm MLP and a CNN are not Poole et al.'s plain MLP: the line cites the prediction's own source."""
    import torch

    import graddoctor as gd

    torch.manual_seed(0)
    nets = [(gd.NetSpec(depth=6, width=32, in_shape=(32,), activation="tanh"), "Poole et al. 2016"),
            (gd.NetSpec(depth=6, width=32, in_shape=(32,), batchnorm="before_activation"), "Yang et al. 2019"),
            (gd.NetSpec(kind="cnn", depth=4, width=8, in_shape=(3, 8, 8), activation="relu", init="he_normal"),
             "Xiao et al. 2018")]
    for spec, cited in nets:
        x, y = torch.randn(64, *spec.in_shape), torch.randint(0, 10, (64,))
        d = gd.checkup(gd.build(spec, seed=0), x, y)
        line = " ".join(render_text(d, None).split())
        t = d.context["theory"]
        assert f"{t['source']}: ||δ_1||²/||δ_L||² = 10^{t['predicted_log10_sq_ratio']:.1f} predicted" in line
        assert cited in line and ("Poole" in line) == (cited == "Poole et al. 2016")


def test_the_html_report_shows_what_the_verdict_judged(tmp_path):
    """The HTML report of a network of blocks: judged decades and what they compare with, and the depth axis."""
    import html

    from fakeruns import planted_history, planted_trace, spec_for

    from graddoctor.report.html import write_report
    from graddoctor.store import RunStore

    with RunStore(tmp_path / "runs.db") as st:
        rid = st.save_run(spec_for("healthy", 4), {}, planted_trace("healthy", depth=4, steps=3),
                          planted_history("healthy", steps=3), BLOCKS)
        text = write_report(st, rid, tmp_path / "r.html").read_text()
    header = re.search(r"<tr><th>#</th>(.*?)</tr>", text).group(1)
    assert ">judged decades</th>" in header and ">compared with</th>" in header and ">block</th>" not in header
    exit_row = next(r for r in BLOCKS.context["table"] if r["compared_with"] == r["block"] and r["block"])
    cells = re.search(rf"<tr><td>\d+</td><td class=\"text\">{re.escape(exit_row['name'])}</td>(.*?)</tr>",
                      text).group(1)
    assert f">{exit_row['judged_decades']:.3g}</td>" in cells and f">{exit_row['block']}</td>" in cells
    axis = text[text.index('id="depth-axis-1"'):]
    for b in BLOCKS.context["structure"]["blocks"]:
        assert f"<td class=\"text\">{html.escape(b['name'])}</td><td>{b['signal_decades']:.3g}</td>" in axis
    assert axis.count('class="stage"') == 1  # one stage transition
