"""Plugin tests run pytest sessions in-process (``pytester.runpytest``).

An in-process session removes from ``sys.modules`` every module first imported inside it, so
the next session imports it again: numpy refuses that ("cannot load module more than once per
process") and hypothesis (whose pytest plugin imports it at the end of every session) costs a
second each time. Importing them, and every module of the plugin (some are imported lazily),
once here keeps them loaded for all sessions.
"""

import importlib
import pkgutil
import signal
from collections.abc import Iterator

import hypothesis  # noqa: F401
import numpy  # noqa: F401
import pytest
from suites import NO_DEV_PLUGINS

import pytest_selfopt

pytest_plugins = ["pytester"]

# A suite started in the background by a non-interactive shell (CI runners, `cmd &`) inherits
# SIGINT *ignored*, and so would every child it starts: the Ctrl-C tests would then test
# nothing. A Python handler, unlike "ignored", is reset to the default by exec, so the
# sessions and servers these tests start get Python's KeyboardInterrupt again.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

for _module in pkgutil.walk_packages(pytest_selfopt.__path__, "pytest_selfopt."):
    importlib.import_module(_module.name)


@pytest.fixture
def pytester(pytester: pytest.Pytester) -> Iterator[pytest.Pytester]:
    """pytester, whose sessions (in-process, subprocesses and their xdist workers) start
    without the dev plugins they never use (``suites.NO_DEV_PLUGINS``). pytester clears
    ``PYTEST_ADDOPTS`` for isolation; this sets it after that and restores it before pytester
    restores the outer session's value."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTEST_ADDOPTS", " ".join(NO_DEV_PLUGINS))
        yield pytester
