"""Bounded reading of files a person can edit: size, kind, nesting depth, alias expansion.

Every later step (PyYAML's composer and constructor, our validators, reports) walks the data
recursively, and a YAML alias lets a 1 KB file stand for billions of values ("billion
laughs"). So limits are enforced before anything walks it: the file must be a regular file
under a size cap; a YAML text is first read as a flat event stream (libyaml's parser when
installed: fast and not recursive) counting nesting depth and the number of values with every
alias expanded; only a text within the limits is constructed. JSON is parsed by the C decoder
(which stops deep nesting itself) and then checked for depth without recursion.
docs/reliability.md lists the limits and why.

Errors are :class:`LimitError` without the file name: callers (``yamlread``, ``store.parse``)
turn them into their own one-line error that names the file.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "MAX_DEPTH",
    "MAX_JSON_BYTES",
    "MAX_COMMITTED_VALUES",
    "MAX_VALUES",
    "MAX_YAML_BYTES",
    "SafeLoaderBase",
    "LimitError",
    "check_depth",
    "json_depth_ok",
    "check_yaml",
    "load_json",
    "read_limited",
]

#: Nesting levels; the deepest real file (history.json) needs about 8.
MAX_DEPTH = 64
#: Values in one YAML document with aliases expanded: about 15,000 cases in a cases file.
MAX_VALUES = 200_000
#: The same for baseline.yaml and routing.yaml: about 30 values per phase.
MAX_COMMITTED_VALUES = 50_000
#: Bytes of a YAML file (suite config, cases file, baseline.yaml, routing.yaml).
MAX_YAML_BYTES = 16 * 1024 * 1024
#: Bytes of a JSON file (history.json, decisions.log): hundreds of cycles of the example.
MAX_JSON_BYTES = 32 * 1024 * 1024

#: The fastest safe loader available: libyaml's parser and composer when PyYAML was built
#: with it, else the pure-Python one. Both construct with ``SafeConstructor`` (no Python tags).
SafeLoaderBase: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class LimitError(ValueError):
    """A file beyond a limit or not a readable regular file; the message omits the path."""


def read_limited(path: Path, limit: int) -> bytes | None:
    """The bytes of a regular file of at most ``limit`` bytes; None when it does not exist.

    Opened without blocking and checked with fstat, so a FIFO, a device (``/dev/zero``) or a
    folder in place of the file is refused instead of hanging or reading forever."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        if os.path.islink(path):
            raise LimitError(
                f"is a symbolic link to {os.readlink(path)}, which does not exist"
            ) from None
        return None
    except IsADirectoryError:
        raise LimitError("is a folder, expected a file") from None
    except OSError as exc:
        raise LimitError(f"cannot be read: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise LimitError("is a folder, expected a file")
        if not stat.S_ISREG(info.st_mode):
            raise LimitError("is not a regular file (a pipe or a device?)")
        if info.st_size > limit:
            raise LimitError(f"is {_size(info.st_size)}, above the limit of {_size(limit)}")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:  # grew while we read it
                raise LimitError(f"is above the limit of {_size(limit)}")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise LimitError(f"cannot be read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _size(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB" if n >= 1024 * 1024 else f"{n} bytes"


def check_yaml(text: str, *, max_depth: int = MAX_DEPTH, max_values: int = MAX_VALUES) -> None:
    """Refuse YAML nested deeper than ``max_depth`` or standing for more than ``max_values``
    values once aliases are expanded (a recursive alias is refused too), without building it.

    Syntax errors are left to the real load, which reports them with its usual message."""
    parser: Any = SafeLoaderBase(text)
    stack: list[tuple[str | None, int]] = []  # open collections: (anchor, values at start)
    sizes: dict[str, int] = {}  # completed anchors -> expanded size
    values = 0
    aliased = False
    try:
        while True:
            try:
                event = parser.get_event()
            except yaml.YAMLError:
                return
            if event is None or isinstance(event, yaml.StreamEndEvent):
                return
            line = event.start_mark.line + 1 if event.start_mark else 0
            if isinstance(event, yaml.DocumentStartEvent):
                sizes.clear()
            elif isinstance(event, yaml.ScalarEvent):
                values += 1
                if event.anchor is not None:
                    sizes[event.anchor] = 1
            elif isinstance(event, yaml.AliasEvent):
                if any(anchor == event.anchor for anchor, _ in stack):
                    raise LimitError(
                        f"line {line}: alias *{event.anchor} is inside the value it names "
                        "(a recursive alias); write the value out instead"
                    )
                values += sizes.get(event.anchor or "", 1)
                aliased = True
            elif isinstance(event, yaml.CollectionStartEvent):
                values += 1
                stack.append((event.anchor, values - 1))
                if len(stack) > max_depth:
                    raise LimitError(
                        f"line {line}: nested more than {max_depth} levels deep; "
                        "no selfopt file needs that many"
                    )
            elif isinstance(event, yaml.CollectionEndEvent) and stack:
                anchor, start = stack.pop()
                if anchor is not None:
                    sizes[anchor] = values - start
            if values > max_values:
                why = "once its aliases (*name) are expanded " if aliased else ""
                raise LimitError(
                    f"line {line}: more than {max_values:,} values {why}"
                    "(an alias bomb, or a file far too large); refused before reading it"
                )
    finally:
        dispose = getattr(parser, "dispose", None)
        if dispose is not None:
            dispose()


def check_depth(value: Any, max_depth: int = MAX_DEPTH) -> None:
    """Refuse decoded data nested deeper than ``max_depth``, walking it without recursion."""
    todo: list[tuple[Any, int]] = [(value, 1)]
    seen: set[int] = set()
    while todo:
        node, depth = todo.pop()
        if isinstance(node, dict | list):
            if depth > max_depth:
                raise LimitError(f"nested more than {max_depth} levels deep")
            if id(node) in seen:
                continue
            seen.add(id(node))
            children = node.values() if isinstance(node, dict) else node
            todo.extend((child, depth + 1) for child in children if isinstance(child, dict | list))


_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')  # unrolled: linear on long strings
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_INNERMOST = re.compile(r"\[\]|\{\}")


def json_depth_ok(text: str, max_depth: int = MAX_DEPTH) -> bool:
    """Is valid JSON ``text`` nested at most ``max_depth`` deep? Decided on the text with
    regular expressions (C speed): strings dropped, then innermost bracket pairs removed
    once per level, at most ``max_depth`` times."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    for _ in range(max_depth):
        if not brackets:
            return True
        brackets = _INNERMOST.sub("", brackets)
    return not brackets


def _refuse_constant(name: str) -> Any:
    raise LimitError(f"{name} is not a number JSON allows; write null or a finite number")


def load_json(text: str) -> Any:
    """``json.loads`` with bounded depth, no NaN/Infinity, and every failure a LimitError or
    a ``json.JSONDecodeError`` (both ValueErrors)."""
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise LimitError(f"nested more than {MAX_DEPTH} levels deep") from None
    except json.JSONDecodeError:
        raise
    except LimitError:
        raise
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise LimitError(str(exc)) from None
    if not json_depth_ok(text):
        raise LimitError(f"nested more than {MAX_DEPTH} levels deep")
    return value
