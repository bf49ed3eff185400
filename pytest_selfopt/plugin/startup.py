"""A Ctrl-C while pytest is still starting a selfopt session: one line and exit status 2.

Imported first by ``hooks`` (the plugin's entry point), so it takes effect as soon as pytest
loads the plugin: while pytest imports the other plugins and conftests and parses the
options. Python's own handler would end the process with an
interpreter traceback of whatever module was importing and exit status 130, and users would
not know whether anything was written. Nothing has been run, locked or written that early,
so ending the process at once loses nothing. ``release`` hands SIGINT back to Python (and so
to pytest's own handling) as soon as the controller is registered and can clean up after an
interrupt itself (docs/reliability.md, "A broken session keeps its samples; Ctrl-C is one
line").

Only for command lines that ask for selfopt (an option starting with ``--selfopt``), only in
the main thread, and only while nobody else has replaced Python's default handler — but for
the one ``pytest_selfopt.pth`` installs at the interpreter's start (marked ``selfopt_early``;
the same line, the same exit), which covers the time before pytest imports the plugin: pytest's
own imports and the plugins it loads first. This module replaces it, so that ``release``
hands SIGINT back to Python in either case.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType

LINE = b"\nselfopt: interrupted while pytest was starting; nothing was run or written\n"
#: The terminal's stderr, kept before pytest's capture takes file descriptor 2 over (it does
#: while conftests are imported); a line written there would vanish with the process.
_STDERR: int | None = None
#: Whether this process was started for a selfopt command line (``install`` took SIGINT): then
#: nothing runs after the session but the interpreter's exit, and a Ctrl-C there must stay
#: quiet too (``owns_process``).
_OWNED = False


def _interrupted(signum: int, frame: FrameType | None) -> None:
    os.write(2 if _STDERR is None else _STDERR, LINE)
    os._exit(2)


def _wanted() -> bool:
    handler = signal.getsignal(signal.SIGINT)
    return (
        threading.current_thread() is threading.main_thread()
        and any(arg.startswith("--selfopt") for arg in sys.argv[1:])
        and (handler is signal.default_int_handler or getattr(handler, "selfopt_early", False))
    )


def owns_process() -> bool:
    """True when this process runs a selfopt command line (not, e.g., a test run that starts
    sessions in-process with pytester, whose own handlers must come back after each)."""
    return _OWNED


def install() -> None:
    global _STDERR, _OWNED
    if _wanted():
        _OWNED = True
        try:
            _STDERR = os.dup(2)
        except OSError:
            _STDERR = None
        signal.signal(signal.SIGINT, _interrupted)


def release() -> None:
    """SIGINT raises KeyboardInterrupt again (pytest's handling) if ours is still in place."""
    global _STDERR
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is _interrupted
    ):
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if _STDERR is not None:
        os.close(_STDERR)
        _STDERR = None


install()
