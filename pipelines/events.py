"""Retraining when the data change: a Prefect event for each new data version, and the trigger on it.

`version_data` (behind `ganops data prepare` and the flows' data step) announces a data version that
differs from the one `data.dvc` recorded before; `ganops schedule --on-new-data` serves `retrain` with a
trigger on that event for its project, so each new version starts exactly one flow run, and the same
version again starts none.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

DATA_EVENT = "ganops.data.new-version"
RESOURCE = "ganops.data"


def announce_data_version(project: Path, version: str, previous: str | None) -> bool:
    """Emit `DATA_EVENT` for `project`'s new data `version` to the Prefect server at $PREFECT_API_URL
    (none configured: nothing to tell, and no temporary server is started for it)."""
    from prefect.settings import PREFECT_API_URL

    if not (os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()):
        return False
    from prefect.events import emit_event

    emit_event(
        event=DATA_EVENT,
        resource={
            "prefect.resource.id": RESOURCE,
            "ganops.project": str(Path(project).resolve()),
            "ganops.data-version": version,
        },
        payload={"previous": previous},
    )
    return True


def new_data_trigger(project: Path, parameters: dict[str, Any]) -> Any:
    """A deployment trigger: one run of the deployment per `DATA_EVENT` of `project`."""
    from prefect.events import DeploymentEventTrigger

    return DeploymentEventTrigger(
        name="new data version",
        expect={DATA_EVENT},
        match={"prefect.resource.id": RESOURCE, "ganops.project": str(Path(project).resolve())},
        parameters=parameters,
    )
