"""Model cards: the Markdown descriptions MLflow's UI shows on a model version and a registered model.

A version's card says what the model is (family, dataset, data version, the run and commit that made
it), its evaluation (each metric with how it was measured and on how many images), the latest promotion
decision about it, the fixed-seed sample grid the evaluation logged, and how to load it. A registered
model's description is its champion and its promotion history, one readable line per decision.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

# The evaluation's fixed-seed grid (seeds 0..63), logged on the run by `ganops evaluate`.
SAMPLES_ARTIFACT = "evaluation/samples.png"


def _how(metric: str, info: dict[str, str]) -> str:
    """How `metric` was measured, from the evaluation's `eval.*` tags."""
    split = info.get("split", "test")
    domain = (
        f"features of the evaluation's domain classifier (test accuracy "
        f"{info.get('domain_extractor_test_accuracy', '?')}), {info.get('domain_n_real', '?')} real "
        f"`{split}` images against {info.get('domain_n_fake', '?')} generated; "
        f"{info.get('domain_implementation', '')}"
    )
    described = {
        "test_accuracy": f"the EMA classifier's accuracy on {info.get('accuracy_count', '?')} `{split}` images",
        "domain_fd": f"Fréchet distance in {domain}",
        "domain_kid": f"kernel inception distance (subsets of {info.get('domain_kid_subset_size', '?')}) "
        "in the same features",
        "domain_kid_std": "its standard deviation over the subsets",
        "inception_fid": f"pytorch-fid's FID (Inception-v3 pool features), {info.get('inception_n_real', '?')} "
        f"real against {info.get('inception_n_fake', '?')} generated images",
    }
    return described.get(metric, "")


def version_card(
    name: str,
    version: str,
    run: Any,
    metrics: dict[str, float],
    decision: dict[str, Any] | None,
    has_samples: bool,
) -> str:
    """The card of registered version `name`/`version`, made from its training run `run`."""
    tags = run.data.tags
    info = {k.removeprefix("eval."): v for k, v in tags.items() if k.startswith("eval.")}
    kind = "classifier" if name.endswith("-classifier") else "generator"
    commit = tags.get("git_commit", "unknown")
    dirty = " (with uncommitted changes)" if tags.get("git_dirty") == "true" else ""
    lines = [
        f"**{name} version {version}**: the {kind} of run `{run.info.run_name}` (`{run.info.run_id}`), "
        f"trained on `{tags.get('dataset', '?')}` at data version `{tags.get('data_version', '?')}` "
        f"from commit `{commit[:12]}`{dirty}; its weights are the {tags.get('model_selection', 'last')} "
        f"epoch's ({tags.get('model_epoch', '?')}; {tags.get('stop_reason', '')}).",
        "",
    ]
    if kind == "generator" and has_samples:
        path = quote(SAMPLES_ARTIFACT, safe="")
        lines += [f"![seeds 0-63](get-artifact?path={path}&run_uuid={run.info.run_id})", ""]
    shown = {k: v for k, v in sorted(metrics.items()) if "_class_" not in k}
    if shown:
        lines += ["| metric | value | measured as |", "|---|---:|---|"]
        lines += [f"| {k} | {v:.4g} | {_how(k, info)} |" for k, v in shown.items()]
        lines += ["", f"Evaluation signature `{info.get('signature', '?')}` (only equal signatures compare)."]
    else:
        lines.append("Not evaluated yet.")
    if decision is not None:
        lines += [
            "",
            f"Promotion: **{decision['action']}** ({decision['time']}): {decision['reason']}.",
        ]
    example = "np.arange(16)" if kind == "generator" else "images  # uint8 (N, H, W, C)"
    lines += [
        "",
        "Load it:",
        "",
        "```python",
        "import mlflow, numpy as np",
        f'model = mlflow.pyfunc.load_model("models:/{name}/{version}")',
        f"out = model.predict({example})"
        + ("  # one uint8 (H, W, C) image per seed" if kind == "generator" else "  # class probabilities"),
        "```",
    ]
    if kind == "generator":
        lines += ["", f"or `ganops sample --model {name}/{version} --out grid.png`."]
    return ("\n".join(lines) + "\n")[:DESCRIPTION_LIMIT]


# MLflow's SQL stores keep at most 5,000 characters of a description.
DESCRIPTION_LIMIT = 5000


def model_description(name: str, champion: str | None, history: list[str]) -> str:
    """A registered model's description: its champion and its decisions, newest last (the latest that
    fit in MLflow's limit; `ganops registry history` prints them all)."""
    head = [
        f"**{name}**: champion " + (f"version {champion}" if champion else "not chosen yet") + ".",
        "",
        f"Promotion history (all of it: `ganops registry history {name}`):",
        "",
        "```",
    ]
    room = DESCRIPTION_LIMIT - len("\n".join(head)) - 200
    shown: list[str] = []
    for line in reversed(history):
        line = line[:500]
        if len(line) + 1 > room:
            shown.insert(0, f"... {len(history) - len(shown)} earlier decisions")
            break
        shown.insert(0, line)
        room -= len(line) + 1
    return "\n".join([*head, *shown, "```"]) + "\n"
