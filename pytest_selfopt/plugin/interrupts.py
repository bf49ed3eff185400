"""Ctrl-C once the session runs: held while the cycle is closed, one line after it, and
unanswered once the controller is done (docs/reliability.md, "A broken session keeps its
samples; Ctrl-C is one line"). Before that, ``startup`` (imported first, kept light) answers
it; in between, pytest's own handling, which the controller shortens.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from pytest_selfopt.plugin.startup import owns_process


@contextmanager
def held_until_written(
    config: pytest.Config, line: Callable[[], str], before_exit: Callable[[], None]
) -> Iterator[None]:
    """Ctrl-C waits while the cycle is closed (decided and written, or given up), then, until
    the process ends, ends it at once with ``line()`` and exit status 2: a traceback from
    xdist's teardown or another plugin's sessionfinish would only make people believe nothing
    was written (docs/reliability.md). ``before_exit`` runs first (summary, journal, lock)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def after_write(signum: int, frame: object) -> None:
        try:
            sys.stdout.flush()  # the summary printed so far; os._exit would drop it
        except (OSError, RuntimeError, ValueError):
            pass
        try:
            before_exit()
        finally:
            os.write(2, f"\nselfopt: {line()}\n".encode())
            os._exit(2)

    # The handler is swapped, not the signal mask: the kernel may hand SIGINT to another
    # thread (prefetch), and Python then runs the handler in the main thread anyway.
    received: list[int] = []

    def hold(signum: int, frame: object) -> None:
        received.append(signum)

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, after_write)

        def restore() -> None:
            if owns_process():  # only the interpreter's exit is left: stay quiet
                return
            signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)

        config.add_cleanup(restore)
        if received:
            signal.raise_signal(signal.SIGINT)


def unanswered_from_here() -> None:
    """Only the interpreter's exit is left, and it puts SIGINT's default action back before
    it ends: a Ctrl-C then would end the process by the signal after the summary (status
    130). Everything is said and written: let it wait unanswered (selfopt processes only)."""
    if owns_process() and hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


def renderable(entry: Any) -> bool:
    """Whether pytest can render this traceback entry (CPython knows its line)."""
    try:
        return isinstance(entry.lineno, int)
    except TypeError:
        return False
