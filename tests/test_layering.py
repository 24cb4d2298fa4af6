"""The package's import layering (ARCHITECTURE.md section 2), print discipline and light imports.

The layers are the contracts in ``pyproject.toml`` (``[tool.importlinter]``), checked by import-linter's
``lint-imports``: a folder (or core module) imports only from the layers below it.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "portrait"
LINT_IMPORTS = shutil.which("lint-imports")


def contract_layers() -> list[list[str]]:
    """The layers contract of pyproject.toml: top layer first, each a list of unit names."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    (layers,) = [c["layers"] for c in config["contracts"] if c["type"] == "layers"]
    return [[name.strip(" ()") for name in re.split(r"[:|]", layer)] for layer in layers]


def package_units() -> set[str]:
    """Top-level modules and subpackages of portrait (``portrait/x.py`` or ``portrait/x/__init__.py``)."""
    units = {p.stem for p in PACKAGE.glob("*.py") if not p.name.startswith("__")}
    return units | {p.parent.name for p in PACKAGE.glob("*/__init__.py")}


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )


def test_every_unit_of_the_package_has_a_layer() -> None:
    named = [name for layer in contract_layers() for name in layer]
    assert len(named) == len(set(named)), f"a unit is in two layers: {named}"
    missing = package_units() - set(named)
    assert not missing, f"add these to [tool.importlinter] layers in pyproject.toml: {sorted(missing)}"


def test_core_stays_small() -> None:
    """The top-level modules are the job flow and the names every layer shares; everything else lives in
    a subpackage (``__init__``/``__main__`` are the package's own files)."""
    modules = sorted(p.name for p in PACKAGE.glob("*.py") if not p.name.startswith("__"))
    assert len(modules) <= 15, modules


@pytest.mark.skipif(LINT_IMPORTS is None, reason="import-linter is not installed (dev extra)")
def test_package_keeps_its_contracts() -> None:
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "broken" in result.stdout and " 0 broken" in result.stdout


@pytest.mark.skipif(LINT_IMPORTS is None, reason="import-linter is not installed (dev extra)")
@pytest.mark.parametrize(
    "module, line, contract",
    [
        ("sampling.py", "from portrait.pipeline import PortraitPipeline", "Folders are layers"),
        ("models/identity.py", "from portrait.config import RenderConfig", "plain values"),
        ("render/paste.py", "from portrait.models.unet import PortraitUNet", "never import models"),
        ("pipeline.py", "from portrait.weights.load import load_component", "reads no weights"),
    ],
)
def test_contracts_catch_a_bad_import(tmp_path: Path, module: str, line: str, contract: str) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(PACKAGE, copy / "portrait", ignore=shutil.ignore_patterns("assets", "__pycache__"))
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    target = copy / "portrait" / module
    target.write_text(target.read_text(encoding="utf-8") + f"\n{line}\n", encoding="utf-8")
    result = _lint_imports(copy)
    assert result.returncode != 0
    broken = [row for row in result.stdout.splitlines() if row.endswith("BROKEN")]
    assert any(contract in row for row in broken), result.stdout[-3000:]


def print_calls(source: str) -> list[int]:
    return [
        node.lineno
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"
    ]


def test_print_detector() -> None:
    assert print_calls("def f():\n    print('x')\n") == [2]
    assert print_calls("log.info('print(x)')\npprint = 1\n") == []


#: The only subpackages allowed to print: the entry points own the terminal.
MAY_PRINT = ("cli", "batch", "app")


def test_library_does_not_print() -> None:
    offenders = [
        f"{path.relative_to(REPO)}:{line}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.relative_to(PACKAGE).parts[0] not in MAY_PRINT
        for line in print_calls(path.read_text(encoding="utf-8"))
    ]
    assert not offenders, "use logging.getLogger(__name__) instead of print: " + ", ".join(offenders)


def test_light_modules_do_not_import_torch() -> None:
    code = (
        "import sys, portrait, portrait.config, portrait.errors, portrait.layout, portrait.constants\n"
        "print(','.join(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))\n"
    )
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"heavy modules imported: {result.stdout.strip()}"
