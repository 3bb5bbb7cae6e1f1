"""Shared test set-up: passive OpenMP waiting (set before torch is imported), one thread, and
`need`: the one way a test asks for an optional dependency.

`make setup` installs every optional dependency the suite uses (tensorboard, matplotlib,
jinja2, scikit-learn, transformers, lightning, ray, mkdocs; chromium comes from .ci/run), so
under CI=true a missing one is a failure; elsewhere the test is skipped with the reason and
the fix. A test that needs something CI cannot have skips with `pytest.skip(reason)` saying why.

    from conftest import need
    tensorboard = need("tensorboard")             # module level or inside a test
    chromium = need_program("chromium", "chromium-browser")
"""
import importlib
import os
import shutil
from types import ModuleType

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch

torch.set_num_threads(1)

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# module -> how to install it (the default hint is `make setup`, which installs '.[all,dev]')
INSTALL = {"chromium": "apt-get install -y chromium (.ci/run does it)"}


def missing(what: str, install: str = "") -> None:
    """Fail under CI=true (`make setup` installs `what`), skip elsewhere; says what to install either way."""
    how = install or INSTALL.get(what) or "make setup (pip install -e '.[all,dev]')"
    if CI:
        pytest.fail(f"CI=true but {what} is not available: {how} provides it", pytrace=False)
    pytest.skip(f"{what} is not available ({how}); under CI=true this test fails instead",
                allow_module_level=True)


def need(module: str, install: str = "") -> ModuleType:
    """Import an optional dependency that `make setup` installs, or fail (CI) / skip (elsewhere)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        missing(module, install)
        raise  # unreachable: missing() fails or skips


def need_program(*names: str, install: str = "") -> str:
    """The path of the first of `names` on PATH, or fail (CI) / skip (elsewhere)."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    missing(names[0], install)
    raise AssertionError("unreachable")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
