"""`gan_models` is pure PyTorch: it never imports Ray, MLflow, Prefect or DVC, not even lazily."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gan_models"
FORBIDDEN = {"ray", "mlflow", "prefect", "dvc", "pipelines"}


def test_no_forbidden_import_statement_anywhere_in_gan_models() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.name}:{node.lineno} {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert offenders == []


def test_importing_every_module_loads_none_of_them() -> None:
    code = (
        "import importlib, pkgutil, sys, gan_models\n"
        "for m in pkgutil.walk_packages(gan_models.__path__, 'gan_models.'): importlib.import_module(m.name)\n"
        f"print(sorted(n for n in sys.modules if n.split('.')[0] in {sorted(FORBIDDEN)!r}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _project_imports(module: str) -> set[str]:
    """The project modules `module` imports, at module level or inside functions (its whole closure)."""
    root = PACKAGE.parent
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = root / Path(*name.split("."))
        file = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        if not file.exists():
            continue
        seen.add(name)
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.split(".")[0] in {"gan_models", "pipelines"}]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.split(".")[0] in {"gan_models", "pipelines"}:
                    todo.append(node.module)
                    todo += [f"{node.module}.{a.name}" for a in node.names]  # submodules imported by name
    return seen


def test_the_dvc_train_stage_depends_on_every_module_it_runs() -> None:
    """`dvc repro` retrains when the code the train stage runs changes, so its deps list all of it."""
    import yaml

    stage = yaml.safe_load((PACKAGE.parent / "dvc.yaml").read_text())["stages"]["train"]
    deps = [d for d in stage["deps"] if not d.startswith("outputs/")]
    runs = _project_imports("pipelines.ray_train") | _project_imports("pipelines.train")
    files = set()
    for name in runs:
        path = Path(*name.split("."))
        files.add(str(path / "__init__.py") if (PACKAGE.parent / path).is_dir() else f"{path}.py")
    missing = sorted(f for f in files if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps))
    assert missing == []
