"""`graddoctor demo` end to end: measure, diagnose, treat, retrain, report (a short version)."""
from __future__ import annotations

import re

from conftest import need

from graddoctor.cli import main
from graddoctor.store import RunStore


def test_demo_tells_the_whole_story(tmp_path, capsys):
    need("matplotlib")
    need("jinja2")
    out = tmp_path / "demo"
    assert main(["demo", "--epochs", "3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert re.search(r"verdict: [A-Z_, ]*VANISHING", text) and "saturating_activation" in text
    winner = re.search(r"retrain the winner: (\S+)", text)  # printed only when a remedy fixed it
    assert winner, text[-2000:]
    html = (out / "report.html").read_text()
    assert "vanishing" in html and html.count("data:image/png;base64") >= 5  # the template never says it
    assert len(list((out / "figures").glob("*.png"))) == 5
    with RunStore(out / "runs.db", create=False) as store:
        runs = store.runs()
        assert [r.status for r in runs] == ["done", "done"]
        first, fixed = sorted(runs, key=lambda r: r.id)
        assert "vanishing" in first.verdict and fixed.verdict == "healthy"
        assert fixed.final_acc > first.final_acc + 0.3  # the treated network learns, the sigmoid one does not
        treated = {t["remedy"]: t for t in store.treatments(first.id)}
        assert treated[winner[1]]["healthy"] is True  # the winner named on screen is a stored, healthy trial
        assert f"{fixed.final_acc:.3f}" in text  # the full runs' table shows the stored accuracy
