"""What CPython's garbage collector may leave alone in a process that exists for a selfopt
session.

A session of 300 prompts x 7 runs keeps about 125,000 objects alive from its collection to its
end (pytest's items and fixtures, the cases, the plan). The collector walks all of them in
every full collection; twice more after the last test (pytest's own collections, which look
for unraisable exceptions); and once more when the interpreter exits, where it also frees them
one by one. Measured, about 0.6 s of a 12 s cycle, all of it after the last call
(docs/performance.md, "The garbage collector").

* Once collection is done, everything alive is frozen (``gc.freeze``): it lives until the
  session ends anyway. Later collections look only at what the session creates from then on,
  so the garbage that tests make is still collected, and pytest still reports unraisable
  exceptions from it.
* When the interpreter exits (``atexit``: after pytest has reported everything), everything
  left is frozen too, and the operating system takes the memory back at once. CPython does not
  promise to finalize objects at exit anyway: a file left open in a reference cycle is not
  flushed (close files).

Registered only in a process that exists for the session: one started for a selfopt command
line (``startup.owns_process``) and the xdist workers of a selfopt session. A test suite that
runs pytest sessions in its own process (``pytester``) keeps its collector as it is.
"""

from __future__ import annotations

import atexit
import gc

import pytest

NAME = "selfopt_heap"
_EXIT_REGISTERED = False


class Freezer:
    """The plugin object; see the module docstring."""

    def __init__(self) -> None:
        global _EXIT_REGISTERED
        if not _EXIT_REGISTERED:
            _EXIT_REGISTERED = True
            atexit.register(gc.freeze)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        gc.freeze()
