"""`graddoctor check`: the terminal report, --json, and one-line errors for bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from graddoctor.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "models.py"


def test_check_reports_vanishing_with_table(capsys):
    assert main(["check", f"{EXAMPLES}:deep_sigmoid", "--input-shape", "64"]) == 0
    out = capsys.readouterr().out
    assert "verdict: VANISHING" in out and "saturating_activation" in out
    assert "swap_activation" in out
    # one table row per layer in forward order: 20 hidden + head
    assert out.index(" 0 ") < out.index(" 20 ")


def test_check_json_schema(capsys):
    assert main(["check", f"{EXAMPLES}:digits_mlp", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["healthy"] is False
    f = d["findings"][0]
    assert f["kind"] == "vanishing" and f["causes"][0]["name"] == "init_too_small"
    assert set(f) >= {"kind", "severity", "layers", "summary", "evidence", "causes", "remedies"}
    assert [row["name"] for row in d["context"]["table"]][:2] == ["0", "2"]


def test_check_healthy_and_strict(capsys):
    assert main(["check", f"{EXAMPLES}:healthy_relu", "--input-shape", "64", "--strict"]) == 0
    assert "HEALTHY" in capsys.readouterr().out
    assert main(["check", f"{EXAMPLES}:exploding_relu", "--input-shape", "64", "--strict"]) == 1


@pytest.mark.parametrize("args, message", [
    (["check", "nope.py:f", "--input-shape", "4"], "no such file"),
    (["check", f"{EXAMPLES}:missing", "--input-shape", "4"], "has no factory 'missing'"),
    (["check", f"{EXAMPLES}", "--input-shape", "4"], "expected FILE.py:FACTORY"),
    (["check", f"{EXAMPLES}:deep_sigmoid", "--input-shape", "3x32x32"], "failed on inputs of shape"),
    (["check", f"{EXAMPLES}:deep_sigmoid", "--input-shape", "axb"], "--input-shape must look like"),
    (["check", f"{EXAMPLES}:deep_sigmoid"], "give --input-shape"),
], ids=["no-file", "no-factory", "no-colon", "shape-mismatch", "bad-shape", "no-data"])
def test_bad_input_is_one_line_exit_2(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("graddoctor: error:") and message in err and "\n" not in err


def test_factory_that_raises(tmp_path, capsys):
    f = tmp_path / "bad.py"
    f.write_text("def make():\n    raise RuntimeError('boom')\n")
    assert main(["check", f"{f}:make", "--input-shape", "4"]) == 2
    assert "raised RuntimeError: boom" in capsys.readouterr().err


def test_check_runs_as_a_real_command():
    r = subprocess.run([sys.executable, "-m", "graddoctor.cli", "check", f"{EXAMPLES}:healthy_relu",
                        "--input-shape", "64", "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["healthy"] is True
