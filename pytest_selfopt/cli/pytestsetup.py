"""Where pytest would look: its rootdir, ini file, collection paths and ``selfopt_*`` ini keys.

The ``selfopt`` command runs outside a pytest session, yet must agree with the next
``pytest --selfopt`` about the rootdir, the ini file, ``testpaths`` and the ``selfopt_config``
/ ``selfopt_baselines`` keys. Instead of a copy of pytest's search rules (which change between
pytest versions), it asks pytest: a Config is built exactly as ``pytest`` builds one
(``get_config``, then the ``pytest_cmdline_parse`` hook; pytester does the same), from the same
folder and arguments, read, and torn down. Nothing is collected and no ``pytest_configure``
runs; conftest files are imported, as pytest would (docs/architecture.md, "the CLI").
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pytest_selfopt.suite.config import find_config

#: The ini key of the committed files' folder and its default (registered by the plugin).
BASELINES_KEY, BASELINES_DEFAULT = "selfopt_baselines", "baselines"
CONFIG_KEY = "selfopt_config"


class SetupError(Exception):
    """pytest could not read its configuration here; the message says where and why."""


@dataclass(frozen=True)
class PytestSetup:
    """What a pytest session started in ``folder`` with ``args`` would use."""

    folder: Path  # where pytest runs (its invocation directory)
    rootdir: Path
    inifile: Path | None
    paths: tuple[Path, ...]  # what it collects: the arguments, else testpaths, else ``folder``
    from_args: bool  # ``paths`` come from the arguments (a file or folder was named)
    from_testpaths: bool  # ``paths`` come from the ini's ``testpaths``
    baselines: Path  # rootdir / selfopt_baselines
    suite_config: Path | None  # selfopt_config, else the plugin's default locations

    def notes(self, *, suite: bool = True) -> list[str]:
        """Warnings worth a line on stderr: no ini file; no suite config (when ``suite``)."""
        out = []
        if self.inifile is None:
            out.append(
                f"no pytest ini file found from {self.folder} (pytest.ini, pyproject.toml "
                f"[tool.pytest.ini_options], tox.ini, setup.cfg); rootdir {self.rootdir}, "
                f"committed files in {self.baselines}"
            )
        if suite and self.suite_config is None:
            out.append(
                f"no suite config found under the rootdir {self.rootdir}; create "
                "benchmarks/selfopt.yaml or set selfopt_config in your pytest ini"
            )
        return out

    def default_args(self) -> list[str]:
        """The path arguments ``selfopt loop`` adds when the user named no file or folder.

        None, leaving pytest its own choice, when the ini's ``testpaths`` contain the suite
        config or the config lies directly in the rootdir; otherwise the config's folder
        (``benchmarks``), so neither a repository whose ``testpaths`` are its unit tests nor
        one without ``testpaths`` runs its unit tests every cycle."""
        config = self.suite_config
        if self.from_args or config is None or config.parent == self.rootdir:
            return []
        if self.from_testpaths and any(config == p or p in config.parents for p in self.paths):
            return []
        folder = config.parent
        with contextlib.suppress(ValueError):
            return [str(folder.relative_to(self.folder))]
        return [str(folder)]


def pytest_setup(folder: Path, args: Sequence[str] = ()) -> PytestSetup:
    """Ask pytest what a session started in ``folder`` with ``args`` would use.

    Raises :class:`SetupError` when pytest itself would refuse (a bad ini file, an unknown
    option, a conftest that fails to import)."""
    from _pytest.config import get_config

    folder = Path(folder).resolve()
    with contextlib.chdir(folder), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        early = get_config(list(args))
        config = early
        try:
            config = early.pluginmanager.hook.pytest_cmdline_parse(
                pluginmanager=early.pluginmanager, args=list(args)
            )
            rootdir, inifile = config.rootpath, config.inipath
            source = getattr(config.args_source, "name", "")
            from_args, from_testpaths = source == "ARGS", source == "TESTPATHS"
            paths = tuple((folder / str(a).split("::")[0]).resolve() for a in config.args)
            try:
                baselines = str(config.getini(BASELINES_KEY) or BASELINES_DEFAULT)
                configured = str(config.getini(CONFIG_KEY) or "") or None
            except ValueError:  # the plugin is not loaded (plugin autoload disabled)
                baselines, configured = BASELINES_DEFAULT, None
        except Exception as exc:  # noqa: BLE001 - pytest and conftests raise anything
            cause = f": {exc.__cause__}" if exc.__cause__ is not None else ""
            text = " ".join(f"{exc}{cause}".split()) or type(exc).__name__
            raise SetupError(
                f"pytest could not read its configuration in {folder}: {text}"
            ) from None
        finally:
            config._ensure_unconfigure()
    del caught  # pytest's configuration-time warnings belong to the pytest run, not here
    return PytestSetup(
        folder=folder,
        rootdir=rootdir,
        inifile=inifile,
        paths=paths or (folder,),
        from_args=from_args,
        from_testpaths=from_testpaths,
        baselines=rootdir / baselines,
        suite_config=_resolved(find_config(rootdir, configured)),
    )


def _resolved(path: Path | None) -> Path | None:
    return None if path is None else path.resolve()
