"""Promotion: which generator is the `champion`, decided by a policy from config, recorded with its reason.

Default policy (`promotion` in params.yaml): higher `test_accuracy` wins, and the candidate's FD may be
at most `fd_tolerance` worse than the champion's; a generator without a classifier is ranked by FD.
Only candidates evaluated the same way (equal evaluation signature: metric implementation, dataset
version, splits and image counts) are compared. The winner gets `champion`, the version it replaces
gets `previous`; the run's classifier follows its generator. Promotions of one model are serialised by
a lock, and the champion is re-read under it, so two at once never let a worse model win.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gan_models.config import Config, PromotionConfig
from gan_models.errors import GanOpsError
from pipelines.evaluate import evaluation_of_run, get_finished_run, run_config, run_models
from pipelines.registry import (
    CHAMPION,
    PREVIOUS,
    Registry,
    RegistryError,
    Version,
    model_name,
    promotion_lock,
    sibling_names,
)
from pipelines.tracking import resolve_target


@dataclass
class Decision:
    promote: bool
    reason: str
    candidate: dict[str, float] = field(default_factory=dict)
    champion: dict[str, float] = field(default_factory=dict)


def fd_metric(policy: PromotionConfig, metrics: dict[str, float]) -> str:
    """The policy's FD, or Inception FID where a model has only that (unlabelled data: the domain FD's
    classifier needs class labels, so evaluation measured Inception FID instead)."""
    if policy.fd_metric not in metrics and "inception_fid" in metrics:
        return "inception_fid"
    return policy.fd_metric


def decide(candidate: Version, champion: Version | None, policy: PromotionConfig) -> Decision:
    """Whether `candidate` should replace `champion` under `policy`, and why (pure; no registry access)."""
    fd = fd_metric(policy, candidate.metrics)
    keys = (policy.primary_metric, fd)
    numbers = {k: v for k, v in candidate.metrics.items() if k in keys}
    if champion is None:
        return Decision(True, "no champion yet", numbers)
    held = {k: v for k, v in champion.metrics.items() if k in keys}
    if champion.version == candidate.version:
        return Decision(False, f"version {candidate.version} is already the champion", numbers, held)
    if not candidate.signature or candidate.signature != champion.signature:
        return Decision(
            False,
            f"not comparable: evaluated differently from champion version {champion.version} (evaluation "
            f"signature {candidate.signature or 'none'} vs {champion.signature or 'none'}: metric "
            "implementation, dataset version or image counts differ); promote by hand if intended",
            numbers,
            held,
        )
    if fd not in numbers or fd not in held:
        return Decision(False, f"not comparable: {fd} is missing on one side", numbers, held)
    primary = policy.primary_metric
    if primary in numbers and primary in held:
        gain = numbers[primary] - held[primary]
        if gain <= policy.min_improvement:
            what = "ties" if gain == 0 else "does not beat"
            return Decision(
                False,
                f"{primary} {numbers[primary]:.4f} {what} the champion's {held[primary]:.4f}"
                + (f" by more than {policy.min_improvement:g}" if policy.min_improvement else ""),
                numbers,
                held,
            )
        limit = held[fd] * (1 + policy.fd_tolerance)
        if numbers[fd] > limit:
            return Decision(
                False,
                f"{primary} improves ({numbers[primary]:.4f} > {held[primary]:.4f}) but {fd} "
                f"{numbers[fd]:.4g} is more than {policy.fd_tolerance:.0%} worse than the champion's "
                f"{held[fd]:.4g}",
                numbers,
                held,
            )
        return Decision(
            True,
            f"{primary} {numbers[primary]:.4f} > {held[primary]:.4f} and {fd} {numbers[fd]:.4g} within "
            f"{policy.fd_tolerance:.0%} of {held[fd]:.4g}",
            numbers,
            held,
        )
    # No classifier on one side: the lower FD wins.
    if held[fd] - numbers[fd] > policy.min_improvement:
        return Decision(True, f"{fd} {numbers[fd]:.4g} < champion's {held[fd]:.4g}", numbers, held)
    return Decision(
        False, f"{fd} {numbers[fd]:.4g} does not beat the champion's {held[fd]:.4g}", numbers, held
    )


def rank(candidates: list[Version], policy: PromotionConfig) -> list[Version]:
    """`candidates` best first, by the same rule that guards the champion (`decide`).

    The best is the one that would be champion had the candidates been offered to the registry in turn
    (in the given order, e.g. the trials' order): the first holds the title, and each later one takes
    it only if `decide` would promote it over the holder; the rest are ranked the same way. So the
    sweep never offers a candidate the policy would reject in favour of another trial (an FD beyond
    the tolerance, a different evaluation signature), which the old `max(primary, -fd)` did.
    """
    remaining, ranked = list(candidates), []
    while remaining:
        best = remaining[0]
        for challenger in remaining[1:]:
            if decide(challenger, best, policy).promote:
                best = challenger
        ranked.append(best)
        remaining.remove(best)
    return ranked


@dataclass
class Promotion:
    name: str
    version: str
    decision: Decision
    previous: str | None  # the champion before this decision
    event: dict[str, Any]


# A promotion or rollback moves up to four aliases (two models), then appends to the history: separate
# registry writes. The whole change is first written as one tag on the model (the journal), and every
# promotion, rollback or retry of the model completes a journal it finds before deciding anything, so a
# crash between the writes never leaves `previous == champion` or a generator and classifier from
# different runs for longer than the next attempt.
PENDING_TAG = "promotion.pending"
Aliases = dict[str, dict[str, str | None]]  # model name -> alias -> version (None: remove the alias)


def _promotion_aliases(registry: Registry, name: str, version: Version, old: Version | None) -> Aliases:
    """`champion` -> version, `previous` -> the old champion; the same run's classifier follows."""
    moves: Aliases = {name: {PREVIOUS: old.version if old else None, CHAMPION: version.version}}
    for sibling in sibling_names(name):
        mine = registry.versions_of_run(sibling, version.run_id) if _exists(registry, sibling) else []
        if not mine:
            continue
        theirs = registry.by_alias(sibling, CHAMPION)
        moves[sibling] = {CHAMPION: mine[-1].version}
        if theirs is None or theirs.version != mine[-1].version:
            moves[sibling][PREVIOUS] = theirs.version if theirs else None
    return moves


def _rollback_aliases(registry: Registry, name: str, previous: Version) -> Aliases:
    moves: Aliases = {name: {CHAMPION: previous.version, PREVIOUS: None}}
    for sibling in sibling_names(name):
        if _exists(registry, sibling) and (older := registry.by_alias(sibling, PREVIOUS)) is not None:
            moves[sibling] = {CHAMPION: older.version, PREVIOUS: None}
    return moves


def _commit(registry: Registry, name: str, moves: Aliases, event: dict[str, Any]) -> dict[str, Any]:
    """Journal the change on `name`, then apply it; returns the recorded event."""
    journal = {"aliases": moves, "event": {"id": uuid.uuid4().hex, **event}}
    registry.client.set_registered_model_tag(name, PENDING_TAG, json.dumps(journal, sort_keys=True))
    return _apply(registry, name, journal)


def _apply(registry: Registry, name: str, journal: dict[str, Any]) -> dict[str, Any]:
    """Every write of `journal`, each idempotent (an alias set to its target, the history entry once)."""
    for model, aliases in journal["aliases"].items():
        for alias, version in aliases.items():
            registry.set_alias(model, alias, version)
    event = journal["event"]
    recorded = next((e for e in registry.history(name) if e.get("id") == event["id"]), None)
    if recorded is None:
        recorded = registry.record(name, event["version"], event)
    registry.client.delete_registered_model_tag(name, PENDING_TAG)
    return recorded


def _complete_pending(registry: Registry, name: str) -> dict[str, Any] | None:
    """Finish a promotion or rollback of `name` that stopped half-way; its event, if there was one."""
    pending = registry.client.get_registered_model(name).tags.get(PENDING_TAG)
    return _apply(registry, name, json.loads(pending)) if pending else None


def _exists(registry: Registry, name: str) -> bool:
    try:
        registry.require_model(name)
    except RegistryError:
        return False
    return True


def _event(action: str, version: Version, decision: Decision, old: Version | None) -> dict[str, Any]:
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "action": action,
        "version": version.version,
        "run_id": version.run_id,
        "reason": decision.reason,
        "candidate": decision.candidate,
        "champion": decision.champion,
        "champion_version": old.version if old else None,
    }


def register_run(run_id: str, cfg: Config, project: Path | None = None) -> dict[str, Version]:
    """Register the run's generator and classifier, tagged with run, data version and signature (their
    metrics are the evaluation's, logged on the logged models)."""
    target = resolve_target(cfg.tracking, project)
    run = get_finished_run(target, run_id)
    evaluated = evaluation_of_run(run)
    if evaluated is None:
        raise GanOpsError(f"run {run_id} has not been evaluated: run `ganops evaluate --run {run_id}` first")
    _, info = evaluated
    trained = run_config(target, run)
    registry = Registry(target.uri)
    lock_dir = cfg.promotion.lock_dir
    tags = {
        "run_id": run_id,
        "data_version": run.data.tags.get("data_version", "unknown"),
        "dataset_version": info.get("dataset_version", ""),
        "eval.signature": run.data.tags["eval.signature"],
        "git_commit": run.data.tags.get("git_commit", "unknown"),
    }
    return {
        kind: registry.register(
            model_name(trained.data.dataset, trained.model.name, kind), m.model_uri, run_id, tags, lock_dir
        )
        for kind, m in run_models(target, run_id).items()
    }


def promote_run(run_id: str, cfg: Config, project: Path | None = None) -> Promotion:
    """Register an evaluated run's models and apply the promotion policy to its generator."""
    versions = register_run(run_id, cfg, project)
    generator = versions["generator"]
    return _promote(cfg, generator.name, generator.version, by_hand=False)


def promote_version(name: str, version: str, cfg: Config) -> Promotion:
    """Make `name` version `version` the champion by hand (recorded as such, the policy not consulted)."""
    return _promote(cfg, name, version, by_hand=True)


def _promote(cfg: Config, name: str, version: str, *, by_hand: bool) -> Promotion:
    registry = Registry(resolve_target(cfg.tracking).uri)
    with promotion_lock(registry.uri, name, cfg.promotion.lock_dir):
        candidate = registry.get_version(name, version)  # fails naming the model or the version
        finished = _complete_pending(registry, name)
        resumed = finished is not None and finished["action"] == "promoted"
        if resumed and finished["version"] == candidate.version and not by_hand:
            # A retry of the promotion that stopped half-way: it is done now, and recorded once.
            done = Decision(True, finished["reason"], finished["candidate"], finished["champion"])
            return Promotion(name, candidate.version, done, finished["champion_version"], finished)
        champion = registry.by_alias(name, CHAMPION)  # re-read under the lock: the latest truth
        decision = decide(candidate, champion, cfg.promotion)
        if by_hand:
            already = champion is not None and champion.version == candidate.version
            decision = Decision(
                not already,
                decision.reason if already else "promoted by hand",
                decision.candidate,
                decision.champion,
            )
        action = ("promoted" if decision.promote else "rejected") + (" by hand" if by_hand else "")
        event = _event(action, candidate, decision, champion)
        if decision.promote:
            event = _commit(registry, name, _promotion_aliases(registry, name, candidate, champion), event)
        else:
            event = registry.record(name, candidate.version, event)
    return Promotion(name, candidate.version, decision, champion.version if champion else None, event)


def rollback(name: str, cfg: Config) -> Promotion:
    """Restore `previous` as the champion; the rolled-back version loses its alias."""
    registry = Registry(resolve_target(cfg.tracking).uri)
    with promotion_lock(registry.uri, name, cfg.promotion.lock_dir):
        registry.require_model(name)
        _complete_pending(registry, name)
        previous = registry.by_alias(name, PREVIOUS)
        champion = registry.by_alias(name, CHAMPION)
        if previous is None:
            raise RegistryError(f"{name} has no {PREVIOUS!r} version to roll back to")
        decision = Decision(True, f"rolled back from version {champion.version if champion else 'none'}")
        event = _event("rolled back", previous, decision, champion)
        event = _commit(registry, name, _rollback_aliases(registry, name, previous), event)
    return Promotion(name, previous.version, decision, champion.version if champion else None, event)


def decision_dict(promotion: Promotion) -> dict[str, Any]:
    return {"name": promotion.name, "version": promotion.version, **asdict(promotion.decision)}
