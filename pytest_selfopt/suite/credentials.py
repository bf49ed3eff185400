"""Refusing literal credentials in config files, without ever echoing them.

API keys are only ever referenced by environment variable name (``api_key_env``, or
``${VAR}`` inside headers); anything shaped like a key is an error that names the key path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NoReturn

from pytest_selfopt.suite.yamlread import Reader, sub

_SECRET_KEY = re.compile(r"(?:^|_)(?:api_?key|key|token|secret|passw(?:or)?d|bearer|authorization"
                         r"|auth|credentials?|access_?key|private_?key)$")  # fmt: skip
_SECRET_VALUE = re.compile(r"\b(?:sk-[\w-]{16,}|ghp_[A-Za-z0-9]{20,}|xox[abpr]-[A-Za-z0-9-]{10,}"
                           r"|AKIA[0-9A-Z]{16}|AIza[\w-]{30,})")  # fmt: skip
_ENV_REF = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")


def refuse_secrets(r: Reader, value: Any, key: str) -> None:
    """Fail on anything that looks like a literal credential, without ever echoing it."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            name = re.sub(r"[^a-z0-9]+", "_", str(k).lower())
            if k != "api_key_env" and _SECRET_KEY.search(name) and isinstance(v, str):
                rest = _ENV_REF.sub("", v).strip()  # "Bearer ${OPENAI_API_KEY}" is a reference
                if rest and rest.lower() not in ("bearer", "basic", "token"):
                    _secret(r, sub(key, k))
            refuse_secrets(r, v, sub(key, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            refuse_secrets(r, v, f"{key}[{i}]")
    elif isinstance(value, str) and _SECRET_VALUE.search(value):
        _secret(r, key)


def _secret(r: Reader, key: str) -> NoReturn:
    r.fail(key, "no literal secrets", message=(
        "looks like a literal API key or token (value not shown); never put keys in config "
        "files: export it as an environment variable and reference it by name, e.g. "
        "api_key_env: OPENAI_API_KEY (headers may use ${VAR}); rotate the key if this file "
        "was ever committed"))  # fmt: skip
