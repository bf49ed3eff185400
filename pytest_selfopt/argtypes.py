"""argparse ``type=`` functions shared by the pytest options and the ``selfopt`` command.

A refusal names what was expected and shows the value, as argparse prints it after the option.
"""

from __future__ import annotations

import argparse


def whole_number(text: str, minimum: int | None = None) -> int:
    """argparse type: a whole number (at least ``minimum``); the refusal shows the value."""
    try:
        value: int | None = int(text)
    except ValueError:
        value = None
    if value is None or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise argparse.ArgumentTypeError(f"expected a whole number{bound}, got {text!r}")
    return value


def run_count(text: str) -> int:
    """argparse type for ``--selfopt-runs``: 1 to 1,000 (more would collect millions of items)."""
    return _one_to(text, 1000, "runs per spec (more would collect millions of test items)")


def concurrency(text: str) -> int:
    """argparse type for ``--selfopt-concurrency``: 1 to 1,000, as ``concurrency`` in the
    suite config (each call in flight is a thread)."""
    return _one_to(text, 1000, "calls in flight per process (as `concurrency` in the suite config)")


def _one_to(text: str, most: int, what: str) -> int:
    value = whole_number(text, 1)
    if value > most:
        raise argparse.ArgumentTypeError(f"expected at most {most} {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return whole_number(text, 1)


def non_negative_int(text: str) -> int:
    return whole_number(text, 0)


def output_path(text: str) -> str:
    """argparse type: a file to write; refused when it is an existing folder."""
    import os

    if not text or os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"expected a file path to write, got {text!r}")
    return text
