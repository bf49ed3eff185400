"""The probe plugin of ``selfopt loop``: what the next cycle would evaluate, asked of pytest.

Loaded only by ``selfopt loop``'s ``pytest --selfopt --collect-only -p pytest_selfopt.cli.probe``
session, with :data:`PROBE_ENV` naming a file: after collection it writes there the baselines
folder and the candidates every phase would evaluate, so ini options, ``-k``, plan hooks and
conftests count exactly as they would in the next cycle. No model is called.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

#: Environment variable naming the file a probe session writes its findings to.
PROBE_ENV = "PYTEST_SELFOPT_PROBE"


def pytest_collection_finish(session: Any) -> None:
    """Write the baselines folder and the candidates every phase would evaluate (only with
    :data:`PROBE_ENV` set, on the controller)."""
    target = os.environ.get(PROBE_ENV)
    config = session.config
    if not target or hasattr(config, "workerinput"):
        return
    controller = config.pluginmanager.get_plugin("selfopt_controller")
    prepared = getattr(controller, "prepared", None)
    shipment = getattr(controller, "shipment", None)
    if prepared is None or shipment is None:
        return
    candidates: dict[str, set[str]] = {}
    for item in session.items:
        callspec = getattr(item, "callspec", None)
        point = callspec.params.get("selfopt_point") if callspec is not None else None
        spec = getattr(point, "spec", None)
        phase = getattr(point, "phase", None)
        if spec is None or phase is None:
            continue
        plan = shipment.plan_for(phase)
        labels = candidates.setdefault(phase, set())
        if plan is not None and spec.id != plan.baseline.id:
            labels.add(str(getattr(point, "label", spec.id)))
    doc = {
        "baselines": str(Path(prepared.baselines_dir).resolve()),
        "candidates": {phase: sorted(labels) for phase, labels in sorted(candidates.items())},
    }
    Path(target).write_text(json.dumps(doc), encoding="utf-8")
