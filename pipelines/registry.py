"""MLflow model-registry glue: names, registration, aliases, the decision history, the promotion lock.

A training's generator and classifier are registered under `<dataset>-<model>-generator` and
`<dataset>-<model>-classifier`. Each version carries tags naming its run, data version and evaluation
signature; its metrics are those the evaluation logged on the logged model behind it (MLflow 3's model
metrics, shown on the model and model-version pages), so the promotion policy reads everything it
compares from the registry itself. Every decision is written three times: as tags on the version it
concerns (whose description, its model card, says it too), as a numbered `history.NNNNNN` tag on the
registered model, and as a readable line of the registered model's description (what
`ganops registry history NAME` prints).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gan_models.errors import GanOpsError

CHAMPION, PREVIOUS = "champion", "previous"
KINDS = ("generator", "classifier")
HISTORY_PREFIX = "history."


class RegistryError(GanOpsError):
    """A registered model, version or alias does not exist, or the registry refused a change."""


@dataclass(frozen=True)
class Version:
    """A registered model version as the policy sees it."""

    name: str
    version: str
    run_id: str
    signature: str
    metrics: dict[str, float]
    tags: dict[str, str]

    @classmethod
    def of(cls, mv: Any, metrics: dict[str, float]) -> Version:
        tags = dict(mv.tags)
        return cls(mv.name, str(mv.version), mv.run_id or "", tags.get("eval.signature", ""), metrics, tags)


def logged_model_id(mv: Any) -> str | None:
    """The logged model behind registered version `mv`: its `model_id`, else the `models:/<id>` it was
    registered from (the SQLite store keeps only the source)."""
    if getattr(mv, "model_id", None):
        return str(mv.model_id)
    ref = (mv.source or "").removeprefix("models:/")
    return ref if (mv.source or "").startswith("models:/m-") and "/" not in ref else None


def history_line(event: dict[str, Any]) -> str:
    """One decision as a line: time, version, action, reason, the candidate's numbers."""
    numbers = ", ".join(f"{k}={v:.4g}" for k, v in sorted(event.get("candidate", {}).items()))
    return f"{event['time']}  v{event['version']:<4} {event['action']:<18} {event['reason']}" + (
        f" [{numbers}]" if numbers else ""
    )


def model_name(dataset: str, model: str, kind: str) -> str:
    """`svhn` + `ssgan` + `generator` -> `svhn-ssgan-generator`."""
    return f"{dataset}-{model}-{kind}"


def sibling_names(name: str) -> list[str]:
    """The other kinds of the same dataset and model: a generator's classifier and vice versa."""
    for kind in KINDS:
        if name.endswith(f"-{kind}"):
            base = name.removesuffix(f"-{kind}")
            return [f"{base}-{other}" for other in KINDS if other != kind]
    return []


def parse_model_ref(ref: str) -> tuple[str, str | None, str | None]:
    """`NAME@alias`, `NAME/3` or `NAME` -> (name, alias, version)."""
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return name, alias, None
    if "/" in ref and ref.rsplit("/", 1)[1].isdigit():
        name, version = ref.rsplit("/", 1)
        return name, None, version
    return ref, None, None


class Registry:
    """The model registry of one tracking store."""

    def __init__(self, uri: str) -> None:
        import mlflow

        self.uri = uri
        self.client = mlflow.MlflowClient(uri, registry_uri=uri)

    # Reading.
    def get_version(self, name: str, version: str) -> Version:
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version(name, str(version))
        except MlflowException:
            self.require_model(name)
            raise RegistryError(f"registered model {name!r} has no version {version}") from None
        return self.version_of(mv)

    def version_of(self, mv: Any) -> Version:
        """`mv` with the latest value of each evaluation metric on its logged model (those logged
        against a dataset: MLflow also links the run's system metrics to the model)."""
        latest: dict[str, Any] = {}
        if (model_id := logged_model_id(mv)) is not None:
            for metric in self.client.get_logged_model(model_id).metrics or []:
                if not metric.dataset_name:
                    continue
                if metric.key not in latest or metric.timestamp >= latest[metric.key].timestamp:
                    latest[metric.key] = metric
        return Version.of(mv, {k: float(m.value) for k, m in latest.items()})

    def by_alias(self, name: str, alias: str) -> Version | None:
        """The version `alias` points at, or None if the alias is not set."""
        from mlflow.exceptions import MlflowException

        self.require_model(name)
        try:
            mv = self.client.get_model_version_by_alias(name, alias)
        except MlflowException:
            return None
        return self.version_of(mv)

    def require_model(self, name: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            known = sorted(m.name for m in self.client.search_registered_models(max_results=1000))
            raise RegistryError(
                f"no registered model {name!r} in {self.uri}; registered: {', '.join(known) or 'none'}"
            ) from None

    def versions_of_run(self, name: str, run_id: str) -> list[Version]:
        found = self.client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
        return sorted((self.version_of(v) for v in found), key=lambda v: int(v.version))

    def history(self, name: str) -> list[dict[str, Any]]:
        """Every decision recorded for `name`, oldest first."""
        self.require_model(name)
        tags = self.client.get_registered_model(name).tags
        return [json.loads(tags[k]) for k in sorted(tags) if k.startswith(HISTORY_PREFIX)]

    # Writing.
    def register(
        self, name: str, model_uri: str, run_id: str, tags: dict[str, str], lock_dir: Path | None
    ) -> Version:
        """Register `model_uri` as a version of `name` (reused if this run's model is already registered).

        Looked up and created under the model's lock, so two registrations of one run at once (a
        retried task beside the original) make one version.
        """
        import mlflow

        with promotion_lock(self.uri, name, lock_dir):
            existing = [v for v in self.versions_of_run(name, run_id) if v.tags.get("model_uri") == model_uri]
            if existing:
                return existing[-1]
            with contextlib.suppress(Exception):  # already exists: fine
                self.client.create_registered_model(name)
            # `models:/<id>` resolves through the tracking store, so both URIs must point at this store.
            mlflow.set_tracking_uri(self.uri)
            mlflow.set_registry_uri(self.uri)
            mv = mlflow.register_model(model_uri, name, tags={**tags, "model_uri": model_uri})
            self.describe(name, str(mv.version))
            return self.get_version(name, mv.version)

    def set_alias(self, name: str, alias: str, version: str | None) -> None:
        """Point `alias` at `version`, or remove it (None)."""
        if version is None:
            with contextlib.suppress(Exception):
                self.client.delete_registered_model_alias(name, alias)
        else:
            self.client.set_registered_model_alias(name, alias, version)

    def record(self, name: str, version: str | None, event: dict[str, Any]) -> dict[str, Any]:
        """Append `event` to `name`'s history and, if it concerns a version, tag that version with it;
        the registered model's description and the version's card say it too."""
        from pipelines.model_card import model_description

        event = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **event}
        history = [*self.history(name), event]
        self.client.set_registered_model_tag(
            name, f"{HISTORY_PREFIX}{len(history):06d}", json.dumps(event, sort_keys=True)
        )
        if version is not None:
            self.client.set_model_version_tag(name, version, "promotion.decision", event["action"])
            self.client.set_model_version_tag(name, version, "promotion.reason", event["reason"])
            self.client.set_model_version_tag(name, version, "promotion.time", event["time"])
            self.describe(name, version, event)
        champion = self.client.get_registered_model(name).aliases.get(CHAMPION)
        lines = [history_line(e) for e in history]
        description = model_description(name, str(champion) if champion else None, lines)
        self.client.update_registered_model(name, description=description)
        return event

    def describe(self, name: str, version: str, decision: dict[str, Any] | None = None) -> None:
        """Write the model card of `name`/`version` (`model_card.version_card`) as its description."""
        from pipelines.model_card import SAMPLES_ARTIFACT, version_card

        found = self.get_version(name, version)
        if not found.run_id:
            return  # registered by hand from elsewhere: nothing to describe it with
        run = self.client.get_run(found.run_id)
        folder = SAMPLES_ARTIFACT.rsplit("/", 1)[0]
        listed = {f.path for f in self.client.list_artifacts(found.run_id, folder)}
        card = version_card(name, version, run, found.metrics, decision, SAMPLES_ARTIFACT in listed)
        self.client.update_model_version(name, version, description=card)


@contextlib.contextmanager
def promotion_lock(uri: str, name: str, lock_dir: Path | None) -> Iterator[None]:
    """Serialise promotions of `name` in store `uri` (across processes sharing `lock_dir`)."""
    from filelock import FileLock

    from gan_models.io import cache_root

    base = lock_dir or cache_root() / "locks"
    base.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(f"{uri}\n{name}".encode()).hexdigest()[:16]
    with FileLock(str(base / f"promote-{key}.lock"), timeout=600):
        yield
