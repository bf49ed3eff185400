"""Reading YAML for humans: errors that name the file, the key and what was expected.

Shared by the suite config (``config.py``) and cases files (``cases.py``): a YAML 1.2-ish
safe loader that refuses duplicate keys and remembers line numbers, and a :class:`Reader`
whose every check fails with a :class:`ConfigError` in one readable line.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml

from pytest_selfopt.suite.bounded import (
    MAX_VALUES,
    MAX_YAML_BYTES,
    LimitError,
    SafeLoaderBase,
    check_yaml,
    read_limited,
)

_MISSING: Any = object()


class ConfigError(Exception):
    """A bad suite config or cases file, in one line: ``path: key: expected ..., got ...``.

    ``path`` is shown relative to the working directory when inside it; ``key`` is dotted
    (``cases[3].expect``) and empty for whole-file problems (missing file, bad YAML).
    """

    def __init__(self, path: str | Path, key: str, expected: str, got: str | None = None,
                 message: str | None = None) -> None:  # fmt: skip
        self.path, self.key, self.expected, self.got = display_path(path), key, expected, got
        if message is None:
            message = f"expected {expected}" + ("" if got is None else f", got {got}")
        self.message = message
        super().__init__(": ".join(p for p in (self.path, key, message) if p))

    def __reduce__(self) -> tuple[Any, ...]:  # survives pickling (xdist, multiprocessing)
        return (type(self), (self.path, self.key, self.expected, self.got, self.message))


def display_path(path: str | Path) -> str:
    """Relative to the working directory when inside it: shorter messages."""
    p = Path(path)
    try:
        return str(p.relative_to(Path.cwd())) if p.is_absolute() else str(p)
    except (ValueError, OSError):
        return str(p)


def show(value: Any, limit: int = 80) -> str:
    """A short repr for 'got ...' (never called on secrets), booleans spelled as the YAML
    file spells them."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = "null (empty)" if value is None else repr(plain(value))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def plain(value: Any) -> Any:
    """Builtin dicts and lists all the way down (the loader's dicts carry line numbers)."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    return [plain(v) for v in value] if isinstance(value, list) else value


def did_you_mean(word: Any, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def sub(key: str, name: Any) -> str:
    """``sub("models", "lfm") == "models.lfm"``; ``sub("", "seed") == "seed"``."""
    return f"{key}.{name}" if key else str(name)


# --- YAML: 1.2 scalars, line numbers, no silent duplicate keys -----------------------------


class LineDict(dict[Any, Any]):
    """A mapping that remembers the line it started on (a case's ``source``)."""

    line: int = 0


class _Loader(SafeLoaderBase):  # type: ignore[misc,valid-type]
    """Safe loader with YAML 1.2 scalars, so answers like ``no`` or ``1:30`` stay text."""


_T = "tag:yaml.org,2002:"
_Loader.yaml_implicit_resolvers = {
    ch: [(t, rx) for t, rx in rs if t[len(_T) :] not in ("bool", "int", "float", "timestamp")]
    for ch, rs in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _tag, _rx, _first in (
    ("bool", r"true|True|TRUE|false|False|FALSE", "tTfF"),
    ("int", r"[-+]?(?:0|[1-9][0-9]*)", "-+0123456789"),
    ("float", (r"[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+(?=[eE]))(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)"), "-+0123456789."),
):  # fmt: skip
    _Loader.add_implicit_resolver(_T + _tag, re.compile(f"^(?:{_rx})$"), list(_first))


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> Iterator[LineDict]:
    data = LineDict()
    data.line = node.start_mark.line + 1
    yield data
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _T + "merge":
            key = loader.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {seen[key]})",
                    key_node.start_mark)  # fmt: skip
            seen[key] = key_node.start_mark.line + 1
    data.update(loader.construct_mapping(node))


_Loader.add_constructor(_T + "map", _construct_map)


def load_yaml(
    path: Path, error: type[ConfigError], not_found: str, max_values: int = MAX_VALUES
) -> Any:
    """Parse one YAML file; every failure (missing, unreadable, too big or deep, bad syntax) is
    ``error``. Limits are checked before anything is built (``bounded.py``)."""
    try:
        data = read_limited(path, MAX_YAML_BYTES)
    except LimitError as exc:
        raise error(path, "", "a readable YAML file", message=str(exc)) from None
    if data is None:
        raise error(path, "", "an existing file", message=not_found)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(path, "", "UTF-8 text", message=_not_utf8(data, exc)) from None
    try:
        check_yaml(text, max_values=max_values)
        return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except LimitError as exc:
        raise error(path, "", "a YAML file within limits", message=str(exc)) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = exc.problem or exc.context or "syntax error"
        raise error(path, "", "valid YAML", message=f"not valid YAML{where}: {problem}") from None
    except yaml.YAMLError as exc:  # e.g. a ReaderError: a control character
        at = getattr(exc, "position", None)
        where = "" if at is None else f" (character {at + 1})"
        raise error(
            path, "", "valid YAML", message=f"not valid YAML{where}: {_first_line(exc)}"
        ) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # a scalar no constructor can build, e.g. an integer of more than 4300 digits
        raise error(path, "", "valid YAML", message=f"not valid YAML: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _not_utf8(data: bytes, exc: UnicodeDecodeError) -> str:
    """Why bytes are not UTF-8, with the likely encoding when its BOM says so."""
    boms = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
            (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16"))  # fmt: skip
    hint = next((f" (it looks like {name})" for bom, name in boms if data.startswith(bom)), "")
    if not hint and data[:64].count(0) >= len(data[:64]) // 4:
        hint = " (it looks like UTF-16 or UTF-32)"
    return f"not UTF-8 text{hint}: {exc.reason} at byte {exc.start}; save it as UTF-8"


class Reader:
    """Typed accessors over loaded YAML that raise ``error`` naming file, key and expectation."""

    def __init__(self, path: str | Path, error: type[ConfigError] = ConfigError) -> None:
        self.path, self.error = Path(path), error

    def fail(
        self, key: str, expected: str, value: Any = _MISSING, message: str | None = None
    ) -> NoReturn:
        raise self.error(
            self.path, key, expected, None if value is _MISSING else show(value), message
        )

    def missing(self, key: str, expected: str) -> NoReturn:
        self.fail(key, expected, message=f"missing; expected {expected}")

    def mapping(
        self, value: Any, key: str, allowed: Sequence[str] | None = None, hint: str = ""
    ) -> Mapping[str, Any]:
        """A mapping with text keys; with ``allowed``, unknown keys fail with a did-you-mean."""
        if not isinstance(value, Mapping):
            self.fail(key, "a mapping (indented `name: value` lines)", value)
        for k in value:
            if not isinstance(k, str):
                self.fail(sub(key, k), "a text key", message=f"expected a text key, got {show(k)}")
            if allowed is not None and k not in allowed:
                known = ", ".join(allowed)
                self.fail(sub(key, k), f"one of: {known}",
                          message=f"unknown key; expected one of: {known}{did_you_mean(k, allowed)}{hint}")  # fmt: skip
        return value

    def integer(self, value: Any, key: str, lo: int | None = None, hi: int | None = None,
                why: str = "") -> int:  # fmt: skip
        """A whole number (never a boolean) within the bounds; ``why`` explains ``hi``."""
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or (lo is not None and value < lo)
            or (hi is not None and value > hi)
        ):
            if lo is not None and hi is not None:
                want = f"a whole number from {lo} to {hi:,}"
            else:
                want = "a whole number" + ("" if lo is None else f" >= {lo}")
            self.fail(key, want + why, value)
        return value

    def number(self, value: Any, key: str, lo: float | None = None, hi: float | None = None,
               lo_open: bool = False) -> float:  # fmt: skip
        """A finite int or float (never a boolean) within the bounds; returned as float."""
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if not (
            ok
            and (lo is None or (value > lo if lo_open else value >= lo))
            and (hi is None or value <= hi)
        ):
            low = "" if lo is None else f"above {lo:g}" if lo_open else f">= {lo:g}"
            if lo is not None and hi is not None:
                want = (
                    f"a number above {lo:g} and at most {hi:g}"
                    if lo_open
                    else f"a number from {lo:g} to {hi:g}"
                )
            else:
                want = f"a number {low}".rstrip()
            self.fail(key, want, value)
        return float(value)

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            self.fail(key, "true or false", value)
        return value

    def string(
        self, value: Any, key: str, pattern: re.Pattern[str] | None = None, what: str = ""
    ) -> str:
        if (
            not isinstance(value, str)
            or not value.strip()
            or (pattern and not pattern.fullmatch(value))
        ):
            self.fail(key, what or "a non-empty string", value)
        return value

    def choice(self, value: Any, key: str, choices: Sequence[str], what: str) -> str:
        if not isinstance(value, str) or value not in choices:
            want = f"{what} (one of: {', '.join(choices)})"
            self.fail(
                key,
                want,
                value,
                f"expected {want}, got {show(value)}{did_you_mean(value, choices)}",
            )
        return value

    def items(self, value: Any, key: str, what: str) -> list[Any]:
        if not isinstance(value, list):
            self.fail(key, what, value)
        return value
