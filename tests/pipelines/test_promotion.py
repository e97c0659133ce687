"""The promotion policy, rollback and concurrent promotions against a real MLflow registry (SQLite).

Versions are created directly as `ganops evaluate` and `ganops promote --run` leave them (metrics on a
logged model, the evaluation signature as a tag), so each case costs milliseconds;
tests/pipelines/test_evaluate.py covers a trained run.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from pathlib import Path

import mlflow
import pytest

from gan_models.config import Config, PromotionConfig, load_config
from pipelines import promotion
from pipelines.promotion import _promote, decide, promote_version, rank, rollback
from pipelines.registry import CHAMPION, PREVIOUS, Registry, RegistryError, Version

POLICY = PromotionConfig()


def version(v: str, accuracy: float | None, fd: float, signature: str = "sig") -> Version:
    metrics = {"domain_fd": fd} | ({"test_accuracy": accuracy} if accuracy is not None else {})
    return Version("m-generator", v, f"run{v}", signature, metrics, {})


@pytest.mark.parametrize(
    ("candidate", "promote", "reason"),
    [
        (version("2", 0.91, 10.5), True, "test_accuracy 0.9100 > 0.9000 and domain_fd 10.5 within 10%"),
        (version("2", 0.89, 9.0), False, "test_accuracy 0.8900 does not beat the champion's 0.9000"),
        (version("2", 0.90, 5.0), False, "test_accuracy 0.9000 ties the champion's 0.9000"),
        (version("2", 0.95, 11.5), False, "domain_fd 11.5 is more than 10% worse than the champion's 10"),
        (version("2", 0.99, 1.0, signature="other"), False, "not comparable: evaluated differently"),
    ],
    ids=["better", "worse", "tied", "fd-too-worse", "incomparable"],
)
def test_policy_better_worse_tied_and_incomparable(candidate: Version, promote: bool, reason: str) -> None:
    decision = decide(candidate, version("1", 0.90, 10.0), POLICY)
    assert decision.promote is promote
    assert reason in decision.reason
    assert decision.champion == {"test_accuracy": 0.90, "domain_fd": 10.0}


def test_ranking_picks_only_what_the_policy_would_promote() -> None:
    steady, sharper_but_worse_fd = version("a", 0.90, 10.0), version("b", 0.91, 20.0)
    other_eval = version("c", 0.99, 1.0, signature="other")
    # max(accuracy, -fd), the sweep's old rule, picked b; the policy rejects b over a (FD 100% worse).
    ranked = rank([steady, sharper_but_worse_fd, other_eval], POLICY)
    assert [v.version for v in ranked] == ["a", "b", "c"]
    # As the registry would decide offered in turn: a's FD is more than 10% worse than x's, so x holds.
    assert [v.version for v in rank([version("x", 0.80, 9.0), steady], POLICY)] == ["x", "a"]
    assert [v.version for v in rank([version("x", 0.80, 9.0), version("y", 0.85, 9.5)], POLICY)] == ["y", "x"]
    assert rank([], POLICY) == []


def test_policy_without_classifier_ranks_by_fd_and_first_candidate_wins() -> None:
    assert decide(version("1", None, 10.0), None, POLICY).reason == "no champion yet"
    assert decide(version("2", None, 8.0), version("1", None, 10.0), POLICY).promote
    assert not decide(version("2", None, 12.0), version("1", None, 10.0), POLICY).promote


def test_unlabelled_generators_are_ranked_by_inception_fid() -> None:
    # CelebA and flat image folders have no labels, so evaluation measures Inception FID instead of the
    # domain FD; the policy ranks those generators by it rather than calling them not comparable.
    def faces(v: str, fid: float) -> Version:
        return Version("celeba-generator", v, f"run{v}", "sig", {"inception_fid": fid}, {})

    assert decide(faces("2", 30.0), faces("1", 35.0), POLICY).promote
    lost = decide(faces("2", 40.0), faces("1", 35.0), POLICY)
    assert not lost.promote and "inception_fid 40 does not beat the champion's 35" in lost.reason
    assert [v.version for v in rank([faces("a", 50.0), faces("b", 31.0)], POLICY)] == ["b", "a"]


# Against a real registry.


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> Config:
    """One registry for the module (creating a SQLite store takes seconds); each test uses its own names."""
    store = tmp_path_factory.mktemp("registry")
    return load_config(
        None, [f"tracking.uri=sqlite:///{store / 'mlruns.db'}", f"promotion.lock_dir={store / 'locks'}"]
    )


def evaluated_version(
    cfg: Config, name: str, run_id: str, metrics: dict[str, float], signature: str = "sig"
) -> str:
    """A registered version as registration leaves it: a logged model of run `run_id` carrying the
    evaluation's `metrics`, registered from `models:/<id>` with the evaluation signature as a tag."""
    from mlflow.entities import Metric

    mlflow.set_tracking_uri(cfg.tracking.uri)  # `models:/<id>` resolves through the tracking store
    client = mlflow.MlflowClient(cfg.tracking.uri, registry_uri=cfg.tracking.uri)
    with contextlib.suppress(mlflow.exceptions.MlflowException):
        client.create_registered_model(name)
    experiment = client.get_run(run_id).info.experiment_id
    model = client.create_logged_model(experiment, name="generator", source_run_id=run_id)
    evaluation = {"model_id": model.model_id, "dataset_name": "d/test", "dataset_digest": "0123"}
    client.log_batch(run_id, metrics=[Metric(k, v, 0, 0, **evaluation) for k, v in metrics.items()])
    source = f"models:/{model.model_id}"
    return str(
        client.create_model_version(name, source, run_id=run_id, tags={"eval.signature": signature}).version
    )


def add_version(cfg: Config, name: str, accuracy: float, fd: float, signature: str = "sig") -> str:
    """A registered version of a run of its own, with this accuracy and FD."""
    client = mlflow.MlflowClient(cfg.tracking.uri)
    experiment = client.get_experiment_by_name("versions") or client.get_experiment(
        client.create_experiment("versions")
    )
    run_id = client.create_run(experiment.experiment_id).info.run_id
    return evaluated_version(cfg, name, run_id, {"test_accuracy": accuracy, "domain_fd": fd}, signature)


def aliases(cfg: Config, name: str) -> dict[str, str]:
    client = mlflow.MlflowClient(cfg.tracking.uri, registry_uri=cfg.tracking.uri)
    return {a: str(v) for a, v in client.get_registered_model(name).aliases.items()}


def test_champion_previous_history_and_rollback(cfg: Config) -> None:
    name = "svhn-ssgan-generator"
    v1 = add_version(cfg, name, 0.80, 20.0)
    v2 = add_version(cfg, name, 0.85, 19.0)
    v3 = add_version(cfg, name, 0.84, 15.0)
    assert _promote(cfg, name, v1, by_hand=False).decision.promote
    assert _promote(cfg, name, v2, by_hand=False).decision.promote
    rejected = _promote(cfg, name, v3, by_hand=False)
    assert not rejected.decision.promote and rejected.previous == v2
    assert aliases(cfg, name) == {CHAMPION: v2, PREVIOUS: v1}

    registry = Registry(cfg.tracking.uri)
    tags = registry.get_version(name, v3).tags
    assert tags["promotion.decision"] == "rejected" and "does not beat" in tags["promotion.reason"]

    rollback(name, cfg)
    assert aliases(cfg, name) == {CHAMPION: v1}
    with pytest.raises(RegistryError, match="no 'previous' version"):
        rollback(name, cfg)
    promote_version(name, v3, cfg)  # by hand: the policy is not consulted
    assert aliases(cfg, name) == {CHAMPION: v3, PREVIOUS: v1}

    history = registry.history(name)
    assert [(e["action"], e["version"]) for e in history] == [
        ("promoted", v1),
        ("promoted", v2),
        ("rejected", v3),
        ("rolled back", v1),
        ("promoted by hand", v3),
    ]
    assert history[2]["candidate"] == {"test_accuracy": 0.84, "domain_fd": 15.0}
    assert history[2]["champion"] == {"test_accuracy": 0.85, "domain_fd": 19.0}


def test_classifier_follows_its_generator(cfg: Config) -> None:
    client = mlflow.MlflowClient(cfg.tracking.uri, registry_uri=cfg.tracking.uri)
    experiment = client.create_experiment("e")
    runs = [client.create_run(experiment).info.run_id for _ in range(2)]
    for name in ("d-m-generator", "d-m-classifier"):
        client.create_registered_model(name)
        for run_id, accuracy in zip(runs, (0.5, 0.6), strict=True):
            evaluated_version(cfg, name, run_id, {"test_accuracy": accuracy, "domain_fd": 1.0}, "s")
    _promote(cfg, "d-m-generator", "1", by_hand=False)
    _promote(cfg, "d-m-generator", "2", by_hand=False)
    assert aliases(cfg, "d-m-classifier") == {CHAMPION: "2", PREVIOUS: "1"}
    rollback("d-m-generator", cfg)
    assert aliases(cfg, "d-m-classifier") == {CHAMPION: "1"}


def _run_in_thread(
    target: Callable[[], object], name: str | None = None
) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def body() -> None:
        try:
            target()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    thread = threading.Thread(target=body, name=name)
    thread.start()
    return thread, errors


def test_two_concurrent_promotions_never_let_the_worse_model_win(
    cfg: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = "race-generator"
    base = add_version(cfg, name, 0.50, 10.0)
    _promote(cfg, name, base, by_hand=False)
    good = add_version(cfg, name, 0.70, 10.0)
    better = add_version(cfg, name, 0.90, 10.0)
    # Force the interleaving: `good` has read the champion (base) and decided, then `better` runs
    # whole before `good` writes. Under the lock `better` cannot start until `good` is done, so
    # `good` stops waiting after a few seconds and `better` then decides against it.
    good_decided, better_done = threading.Event(), threading.Event()
    original = promotion.decide

    def decide_then_wait(candidate: Version, champion: Version | None, policy: PromotionConfig):  # noqa: ANN202
        decision = original(candidate, champion, policy)
        if candidate.version == good:
            good_decided.set()
            better_done.wait(5)
        return decision

    monkeypatch.setattr(promotion, "decide", decide_then_wait)
    first, first_errors = _run_in_thread(lambda: _promote(cfg, name, good, by_hand=False))
    assert good_decided.wait(60)
    second, second_errors = _run_in_thread(lambda: _promote(cfg, name, better, by_hand=False))
    second.join(60)
    better_done.set()
    first.join(60)
    second.join(60)
    assert not first_errors and not second_errors
    # The second saw the first's result under the lock, so the better model is champion.
    assert aliases(cfg, name)[CHAMPION] == better
    actions = [(e["action"], e["version"]) for e in Registry(cfg.tracking.uri).history(name)[1:]]
    assert actions == [("promoted", good), ("promoted", better)]


def _two_runs_of_generator_and_classifier(cfg: Config, base: str) -> None:
    """Versions 1 and 2 of `base`-generator and `base`-classifier, each version from one run."""
    client = mlflow.MlflowClient(cfg.tracking.uri, registry_uri=cfg.tracking.uri)
    experiment = client.create_experiment(base)
    runs = [client.create_run(experiment).info.run_id for _ in range(2)]
    for name in (f"{base}-generator", f"{base}-classifier"):
        client.create_registered_model(name)
        for run_id, accuracy in zip(runs, (0.5, 0.6), strict=True):
            evaluated_version(cfg, name, run_id, {"test_accuracy": accuracy, "domain_fd": 1.0}, "s")


@pytest.mark.parametrize("writes_before_crash", [2, 3])  # the classifier not yet moved
def test_a_promotion_that_crashed_between_alias_writes_is_completed_by_its_retry(
    cfg: Config, monkeypatch: pytest.MonkeyPatch, writes_before_crash: int
) -> None:
    base = f"crash{writes_before_crash}"
    generator, classifier = f"{base}-generator", f"{base}-classifier"
    _two_runs_of_generator_and_classifier(cfg, base)
    _promote(cfg, generator, "1", by_hand=False)
    original, writes = Registry.set_alias, []

    def crash_after_some(self: Registry, name: str, alias: str, version: str | None) -> None:
        if len(writes) == writes_before_crash:
            raise RuntimeError("the process died here")
        writes.append((name, alias))
        original(self, name, alias, version)

    monkeypatch.setattr(Registry, "set_alias", crash_after_some)
    with pytest.raises(RuntimeError, match="died"):
        _promote(cfg, generator, "2", by_hand=False)
    monkeypatch.setattr(Registry, "set_alias", original)

    retried = _promote(cfg, generator, "2", by_hand=False)  # e.g. Prefect's retry of the promote task
    assert retried.decision.promote and retried.previous == "1"
    # Both models moved together, and previous is the old champion, whatever write the crash hit.
    assert aliases(cfg, generator) == {CHAMPION: "2", PREVIOUS: "1"}
    assert aliases(cfg, classifier) == {CHAMPION: "2", PREVIOUS: "1"}
    history = Registry(cfg.tracking.uri).history(generator)
    assert [(e["action"], e["version"]) for e in history] == [("promoted", "1"), ("promoted", "2")]


def test_a_crashed_rollback_is_completed_by_the_next_promotion(
    cfg: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    generator, classifier = "crashrb-generator", "crashrb-classifier"
    _two_runs_of_generator_and_classifier(cfg, "crashrb")
    _promote(cfg, generator, "1", by_hand=False)
    _promote(cfg, generator, "2", by_hand=False)
    original = Registry.set_alias

    def crash_on_the_classifier(self: Registry, name: str, alias: str, version: str | None) -> None:
        if name == classifier:
            raise RuntimeError("the process died here")
        original(self, name, alias, version)

    monkeypatch.setattr(Registry, "set_alias", crash_on_the_classifier)
    with pytest.raises(RuntimeError, match="died"):
        rollback(generator, cfg)
    monkeypatch.setattr(Registry, "set_alias", original)

    rejected = _promote(cfg, generator, "1", by_hand=False)  # any later decision repairs first
    assert not rejected.decision.promote and "already the champion" in rejected.decision.reason
    assert aliases(cfg, generator) == aliases(cfg, classifier) == {CHAMPION: "1"}


def test_registering_one_run_twice_at_once_makes_one_version(
    cfg: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = mlflow.MlflowClient(cfg.tracking.uri)
    experiment = client.create_experiment("register-twice")
    run_id = client.create_run(experiment).info.run_id
    model = client.create_logged_model(experiment, name="generator", source_run_id=run_id)
    registry = Registry(cfg.tracking.uri)
    # Force the interleaving: the first registration has looked for the run's version and found none;
    # the second runs whole before the first creates one (under the lock it waits for the first).
    first_looked, second_done = threading.Event(), threading.Event()
    original = Registry.versions_of_run

    def look_then_wait(self: Registry, name: str, run: str) -> list[Version]:
        found = original(self, name, run)
        # By name: the thread may get here before `_run_in_thread` has returned it to us.
        if threading.current_thread().name == "first":
            first_looked.set()
            second_done.wait(5)
        return found

    def register() -> Version:
        return registry.register("twice-generator", model.model_uri, run_id, {}, cfg.promotion.lock_dir)

    monkeypatch.setattr(Registry, "versions_of_run", look_then_wait)
    first, first_errors = _run_in_thread(register, name="first")
    assert first_looked.wait(60), first_errors
    second, second_errors = _run_in_thread(register)
    second.join(60)
    second_done.set()
    first.join(60)
    second.join(60)
    assert not first_errors and not second_errors
    assert len(original(registry, "twice-generator", run_id)) == 1


def test_unknown_model_version_or_alias_is_a_clear_error(cfg: Config) -> None:
    add_version(cfg, "known-generator", 0.5, 1.0)
    with pytest.raises(RegistryError, match="no registered model 'unknown-generator'.*known-generator"):
        promote_version("unknown-generator", "1", cfg)
    with pytest.raises(RegistryError, match="has no version 7"):
        promote_version("known-generator", "7", cfg)
    from pipelines.sample import sample

    with pytest.raises(RegistryError, match="has no alias 'champion'"):
        sample("known-generator@champion", 4, Path("x.png"), cfg)


def test_a_long_history_fits_the_registered_models_description() -> None:
    """MLflow's SQL stores keep 5,000 characters of a description (PostgreSQL refuses more): the
    description shows the latest decisions that fit, and says where the rest are."""
    from pipelines.model_card import DESCRIPTION_LIMIT, model_description

    lines = [
        f"2026-12-02T00:00:{i % 60:02d}Z  v{i:<4} rejected  test_accuracy 0.5 does not beat 0.6"
        for i in range(300)
    ]
    text = model_description("long-generator", "7", lines)
    assert len(text) <= DESCRIPTION_LIMIT
    assert lines[-1] in text and lines[0] not in text and "earlier decisions" in text
