"""Run a user's `python script.py ARGS` / `python -m module ARGS` in this process, as python would.

What `python script.py` gives a script, it gets here: `sys.argv` ([script as given, *args]),
`__name__ == "__main__"` (its module is `sys.modules["__main__"]` while it runs, so pickling
its classes works), an absolute `__file__`, `sys.path[0]` = the script's directory (`-m`: the
current directory), the working directory unchanged (relative paths resolve as they would).
Its exit status comes back as python's would be: 0, `sys.exit(n)`, 1 after an uncaught
exception (the traceback printed from the script's first frame on, through `sys.excepthook`),
130 after Ctrl-C.
"""
from __future__ import annotations

import builtins
import importlib.util
import io
import os
import re
import runpy
import sys
import traceback
import types
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import GradDoctorError

_PYTHON = re.compile(r"^python(\d+(\.\d+)*)?(\.exe)?$")
_OURS = (str(Path(__file__).resolve().parents[1]), str(Path(runpy.__file__).resolve()))
USAGE = "give the command after --, e.g. graddoctor run -- python train.py --lr 0.1"


@dataclass(frozen=True)
class Command:
    """What to run: a script path or a module name, with its arguments."""

    target: str  # the script's path as given, or the module's name
    args: tuple[str, ...] = ()
    module: bool = False  # python -m target
    interpreter: str | None = None  # 'python', 'python3.11', ... as given (this process's Python runs it)
    unbuffered: bool = False  # python -u


@dataclass
class Outcome:
    """How the script ended."""

    code: int  # the exit status python would have returned
    status: str  # done | failed | interrupted
    exc: BaseException | None = None


def parse_command(argv: list[str]) -> Command:
    """['--', 'python', '-u', 'train.py', '--lr', '1'] -> Command (errors name the fix)."""
    argv = list(argv[1:] if argv[:1] == ["--"] else argv)
    if not argv:
        raise GradDoctorError(f"no command to run: {USAGE}")
    interpreter = None
    if _PYTHON.match(os.path.basename(argv[0])):
        interpreter, argv = argv[0], argv[1:]
    elif not argv[0].endswith(".py") and argv[0] != "-m" and not Path(argv[0]).exists():
        raise GradDoctorError(f"graddoctor run runs a Python script in its own process, not {argv[0]!r}: {USAGE} "
                              "(or python -m module ...)")
    unbuffered = False
    while argv and argv[0].startswith("-") and argv[0] != "-":
        opt = argv.pop(0)
        if opt == "-m":
            if not argv:
                raise GradDoctorError(f"python -m needs a module name: {USAGE}")
            return Command(argv[0], tuple(argv[1:]), True, interpreter, unbuffered)
        if opt in ("-u", "-B"):
            unbuffered = unbuffered or opt == "-u"
            continue
        if opt == "-c":
            raise GradDoctorError("graddoctor run needs a script file or -m module, not python -c code: put the code "
                                  f"in a file and run it: {USAGE}")
        raise GradDoctorError(f"python option {opt!r} is not supported by graddoctor run (the script runs in "
                              f"graddoctor's Python); drop it, or run: python {opt} -m graddoctor run -- script.py")
    if not argv:
        raise GradDoctorError(f"no script to run: {USAGE}")
    script = Path(argv[0])
    if not script.exists():
        raise GradDoctorError(f"no such file: {argv[0]}")
    return Command(argv[0], tuple(argv[1:]), False, interpreter, unbuffered)


def _exec_script(target: str) -> None:
    """Run a .py file (or a directory / zip with __main__.py) as __main__."""
    path = Path(target).absolute()
    if path.is_dir() or zipfile.is_zipfile(path):
        runpy.run_path(str(path), run_name="__main__")
        return
    with io.open_code(str(path)) as f:
        code = compile(f.read(), str(path), "exec", dont_inherit=True)
    main = types.ModuleType("__main__")
    main.__dict__.update(__file__=str(path), __builtins__=builtins, __spec__=None, __package__=None,
                         __cached__=None)
    saved = sys.modules.get("__main__")
    sys.modules["__main__"] = main
    try:
        exec(code, main.__dict__)
    finally:
        if saved is not None:
            sys.modules["__main__"] = saved


def _report(exc: BaseException) -> None:
    """Print an uncaught exception as python would, from the script's first frame on."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_OURS):
        tb = tb.tb_next
    if tb is not None:
        exc.__traceback__ = tb  # python's printer takes the exception's own traceback
    sys.stdout.flush()
    try:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    except Exception:  # a broken excepthook of the user's: the default printer
        traceback.print_exception(exc)


def _exit_code(code: object) -> int:
    """sys.exit(code) -> the process status python gives it (a message is printed, status 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _module_exists(name: str, here: str) -> bool:
    """Can `python -m name` find it, run from `here`?"""
    sys.path.insert(0, here)
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a missing parent package
        return False
    finally:
        sys.path.pop(0)


def run_command(cmd: Command) -> Outcome:
    """Run the command in this process and return how it ended (never raises for the script's errors)."""
    here = os.getcwd() if cmd.module else os.path.dirname(os.path.realpath(cmd.target))
    if cmd.module and not _module_exists(cmd.target, here):
        raise GradDoctorError(f"no module named {cmd.target!r} (python -m {cmd.target}); run from the directory "
                              "that holds it, or check the name")
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = [cmd.target, *cmd.args]
    sys.path[:1] = [here]
    if cmd.unbuffered:
        for stream in (sys.stdout, sys.stderr):
            if hasattr(stream, "reconfigure"):
                stream.reconfigure(write_through=True)
    try:
        if cmd.module:
            runpy.run_module(cmd.target, run_name="__main__", alter_sys=True)
        else:
            _exec_script(cmd.target)
        return Outcome(0, "done")
    except SystemExit as exc:
        code = _exit_code(exc.code)
        return Outcome(code, "done" if code == 0 else "failed", exc if code else None)
    except KeyboardInterrupt as exc:
        _report(exc)
        return Outcome(130, "interrupted", exc)
    except BaseException as exc:  # the script's own error: printed as python would, status 1
        _report(exc)
        return Outcome(1, "failed", exc)
    finally:
        sys.stdout.flush()
        sys.argv, sys.path[:] = saved_argv, saved_path
