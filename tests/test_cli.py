"""`graddoctor` on the command line: help with examples, a real tiny run, one-line errors."""
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from graddoctor.cli import COMMANDS, main

TINY = ["train", "--depth", "2", "--width", "8", "--data", "spirals", "--epochs", "2", "--lr", "0.05",
        "--seed", "0"]
ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "COLUMNS": "120"}


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=120)


def test_top_level_help_lists_commands_and_an_example(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)
    assert "example:" in out and "graddoctor train" in out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    parts = re.split(r"^examples?:$", out, maxsplit=1, flags=re.M)
    assert len(parts) == 2 and f"graddoctor {command}" in parts[1]


def test_train_help_shows_the_issue_example(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.replace("\\\n", " ").split())
    assert ("graddoctor train --kind mlp --depth 20 --width 64 --activation sigmoid --init xavier_normal "
            "--batchnorm none --residual 0 --data digits --optimizer sgd --lr 0.1 --momentum 0.9 "
            "--epochs 10 --seed 0") in out


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage: graddoctor" in capsys.readouterr().out


def test_tiny_train_run_in_process(capsys):
    assert main(TINY) == 0
    out, err = capsys.readouterr()
    assert "2x8 relu mlp, init=torch_default, bn=none" in out
    assert "body.0.linear" in out and "head" in out
    params = (2 * 8 + 8) + (8 * 8 + 8) + (8 * 3 + 3)  # 2 -> 8 -> 8 -> 3 spirals classes
    assert f"total: {params:,} trainable parameters" in out
    final = re.search(r"^final: train acc ([01]\.\d{3}), val acc ([01]\.\d{3}) \(\d+\.\d s\)$", out, re.M)
    assert final and float(final[2]) > 0.4  # 3 spirals: chance is 1/3
    assert err == ""


def test_train_run_as_a_real_process_and_python_dash_m():
    script = Path(sysconfig.get_path("scripts")) / "graddoctor"
    assert script.exists(), f"console script missing at {script}: pip install -e ."
    done = run(str(script), *TINY)
    assert done.returncode == 0, done.stderr
    final = re.search(r"^final: train acc [01]\.\d{3}, val acc ([01]\.\d{3})", done.stdout, re.M)
    assert final and float(final[1]) > 0.4  # the same run as in-process: it trained
    done = run(sys.executable, "-m", "graddoctor.cli", "train", "--depth", "0")
    assert (done.returncode, done.stderr) == (2, "graddoctor: error: depth must be at least 1, got 0\n")
    done = run(sys.executable, "-m", "graddoctor", "--help")
    assert done.returncode == 0 and "usage: graddoctor" in done.stdout


@pytest.mark.parametrize("flags,says", [
    (["--activation", "sigmoidd"], "unknown activation 'sigmoidd'; choose one of: sigmoid, tanh"),
    (["--init", "foo"], "unknown init 'foo'; choose one of: torch_default, small"),
    (["--depth", "0"], "depth must be at least 1"),
    (["--width", "-3"], "width must be at least 1"),
    (["--data", "nope"], "unknown data set 'nope'; choose one of: digits, spirals, gaussians"),
    (["--lr", "-1"], "lr must be a positive number"),
    (["--kind", "rnn"], "unknown kind 'rnn'"),
    (["--kind", "cnn", "--data", "spirals"], "not image-shaped"),
    (["--batchnorm", "sideways"], "unknown batchnorm placement"),
    (["--dtype", "float16"], "unknown dtype"),
    (["--optimizer", "rmsprop"], "unknown optimizer"),
    (["--clip", "0"], "clip_norm must be positive"),
    (["--momentum", "1"], "momentum must be in [0, 1)"),
    (["--residual", "-1"], "residual must be 0"),
], ids=lambda v: "_".join(v) if isinstance(v, list) else "")
def test_bad_input_gives_one_line_and_exit_2(flags, says, capsys):
    assert main(["train", *flags]) == 2
    _out, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("graddoctor: error: ") and says in lines[0]


@pytest.mark.parametrize("flags", [["--depth", "abc"], ["--lr", "fast"], ["--no-such-flag"]], ids=str)
def test_argparse_type_errors_exit_2(flags, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", *flags])
    assert exit_.value.code == 2
    assert "error:" in capsys.readouterr().err
