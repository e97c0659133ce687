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
