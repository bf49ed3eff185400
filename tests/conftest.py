"""Plugin tests run pytest sessions in-process (``pytester.runpytest``).

An in-process session removes from ``sys.modules`` every module first imported inside it, so
the next session imports it again: numpy refuses that ("cannot load module more than once per
process") and hypothesis (whose pytest plugin imports it at the end of every session) costs a
second each time. Importing them, and every module of the plugin (some are imported lazily),
once here keeps them loaded for all sessions.
"""

import importlib
import pkgutil

import hypothesis  # noqa: F401
import numpy  # noqa: F401

import pytest_selfopt

pytest_plugins = ["pytester"]

for _module in pkgutil.walk_packages(pytest_selfopt.__path__, "pytest_selfopt."):
    importlib.import_module(_module.name)
