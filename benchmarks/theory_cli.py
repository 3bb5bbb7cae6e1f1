"""What `graddoctor theory` prints for the example networks of the theory page (one of each family).

Runs each command of COMMANDS as the `graddoctor` entry point does (stdout a pipe, COLUMNS=100;
the progress bar goes to stderr and is left out) and writes what they print, each after its
`$ graddoctor theory ...` line, as one text block: docs/results/theory_cli.md, which
docs/theory.md includes. The measurements are float64 on fixed seeds, so a rerun prints the same digits
(tests/test_docs_examples.py reruns them and compares).

    python benchmarks/theory_cli.py     # seconds
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
COLUMNS = "100"
COMMANDS = (  # plain (critical tanh), residual (mean mode), BatchNorm, CNN (borders)
    "--activation tanh --init xavier_normal --depth 50 --width 256 --measure",
    "--activation relu --init he_normal --depth 50 --width 256 --residual 2 --measure",
    "--activation relu --init he_normal --depth 20 --width 256 --batchnorm before_activation --batch-size 64 "
    "--measure",
    "--kind cnn --image-size 8 --width 64 --activation relu --init he_normal --measure --batch-size 32",
)


# One child process for all of them (one import of torch): each command through graddoctor's own
# entry point, `graddoctor.cli.main`, exactly what `graddoctor theory ARGS` runs.
_DRIVER = """
import sys
from graddoctor.cli import main
for args in sys.argv[1:]:
    print("$ graddoctor theory " + args, flush=True)
    assert main(["theory", *args.split()]) == 0, args
    print(flush=True)
"""


def outputs(commands: tuple[str, ...] = COMMANDS) -> str:
    """Each `$ graddoctor theory ARGS` line and what it prints to stdout (lines right-stripped)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(ROOT / "src"), COLUMNS=COLUMNS, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    done = subprocess.run([sys.executable, "-c", _DRIVER, *commands], cwd=ROOT, env=env, capture_output=True,
                          text=True, check=True)
    return "\n".join(line.rstrip() for line in done.stdout.rstrip().splitlines()) + "\n"


def markdown(text: str) -> str:
    """The outputs as one fenced text block."""
    return "```text\n" + text + "```\n"


def main() -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = markdown(outputs())
    (RESULTS / "theory_cli.md").write_text(text)
    print(text, end="")
    print("wrote docs/results/theory_cli.md")


if __name__ == "__main__":
    main()
