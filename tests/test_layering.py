"""Import layering of the package (ARCHITECTURE.md section 2), checked by walking the source ASTs.

A module may import only portrait modules of a LOWER layer, modules of its own L1 sub-package, or, within
L0 and L2, the modules ranked below it in INTRA_LAYER_ORDER (config needs errors; weights.load_pipeline
needs pipeline). `models` and `sampling` may not import `portrait.config`. Every module must be classified
in LAYERS below.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "portrait"

#: Layer of each top-level unit of the package ("" is ``portrait/__init__.py``).
LAYERS: dict[str, int] = {
    "": 0,
    "config": 0,
    "errors": 0,
    "types": 0,
    "layout": 0,
    "models": 1,
    "sampling": 1,
    "preprocess": 1,
    "motion": 1,
    "emotion": 1,
    "render": 1,
    "pipeline": 2,
    "weights": 2,
    "convert": 2,
    "convert_release": 2,
    "convert_rife": 2,
    "hub": 2,
    "tiny": 2,
    "generate": 3,
    "engine": 3,
    "job_inputs": 3,
    "benchmark": 3,
    "cli": 4,
    "cli_generate": 4,
    "cli_common": 4,
    "cli_tools": 4,
    "batch": 4,
    "batch_manifest": 4,
    "batch_ray": 4,
    "batch_worker": 4,
    "app_handler": 4,
    "app_launch": 4,
}
#: L1 sub-packages whose modules may import each other.
SUBPACKAGES = frozenset({"models", "preprocess", "motion", "render"})
#: Units that take plain values, never a config object.
NO_CONFIG = frozenset({"models", "sampling"})
#: The only units allowed to print (they own the terminal).
MAY_PRINT = frozenset({"cli", "cli_common", "cli_generate", "cli_tools", "batch"})
#: Order inside a layer: a module may import a same-layer module of strictly lower rank (acyclic by
#: construction). L0: errors is the leaf. L2: pipeline < weights < converters < convert < hub, tiny.
#: L4: batch_manifest < batch_ray, batch_worker < batch; cli assembles the commands of cli_tools,
#: cli_generate and batch.
INTRA_LAYER_ORDER: dict[str, int] = {
    "errors": 0,
    "layout": 1,
    "types": 1,
    "config": 1,
    "pipeline": 0,
    "weights": 1,
    "convert_release": 2,
    "convert_rife": 2,
    "convert": 3,
    "hub": 4,
    "tiny": 4,
    "engine": 0,
    "job_inputs": 1,
    "generate": 2,
    "benchmark": 3,
    "cli_common": 0,
    "cli_tools": 1,
    "cli_generate": 1,
    "app_handler": 0,
    "app_launch": 2,  # imported by cli for `portrait-gen app`
    "batch_manifest": 0,
    "batch_ray": 1,
    "batch_worker": 1,
    "batch": 2,
    "cli": 3,
}
#: The package root must stay import-free, so it ranks below every layer as an import target.
ROOT_TARGET_LAYER = -1


def module_name(path: Path) -> str:
    """``portrait/models/unet.py`` -> ``"models.unet"``; ``portrait/__init__.py`` -> ``""``."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit_of(name: str) -> str:
    return name.split(".")[0]


def _is_package(name: str) -> bool:
    return name == "" or (PACKAGE / name.replace(".", "/") / "__init__.py").is_file()


def imported_units(name: str, tree: ast.AST) -> list[tuple[int, str]]:
    """(line, unit) of every portrait import in a module, relative imports resolved."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "portrait" or alias.name.startswith("portrait."):
                    found.append((node.lineno, unit_of(alias.name.partition(".")[2])))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = name.split(".") if _is_package(name) else name.split(".")[:-1]
                package = [p for p in package if p]
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                if node.level - 1 > len(package):
                    found.append((node.lineno, "<beyond portrait>"))
                    continue
                base = base + (node.module.split(".") if node.module else [])
            elif node.module == "portrait" or (node.module or "").startswith("portrait."):
                base = node.module.split(".")[1:]
            else:
                continue
            if base:
                found.append((node.lineno, base[0]))
                continue
            for alias in node.names:  # from portrait import x / from . import x (in the root)
                exists = (PACKAGE / f"{alias.name}.py").is_file() or (PACKAGE / alias.name).is_dir()
                found.append((node.lineno, alias.name if exists or alias.name in LAYERS else ""))
    return found


def violations(name: str, source: str) -> list[str]:
    """Every layering problem of module ``name`` (e.g. ``"models.unet"``) with the given source text."""
    unit = unit_of(name)
    if unit not in LAYERS:
        return [f"portrait.{name}: not classified in tests/test_layering.py LAYERS"]
    problems = []
    for line, target in imported_units(name, ast.parse(source)):
        where = f"portrait.{name}:{line} imports portrait.{target}".replace("portrait.:", "portrait:")
        if target == unit and unit in SUBPACKAGES:
            continue
        if target not in LAYERS:
            problems.append(f"{where}, which is not classified")
            continue
        target_layer = ROOT_TARGET_LAYER if target == "" else LAYERS[target]
        if target_layer == LAYERS[unit] and _ranked_below(target, unit):
            continue
        if target_layer >= LAYERS[unit]:
            problems.append(f"{where} (L{LAYERS[target]}) from L{LAYERS[unit]}: only lower layers allowed")
        if unit in NO_CONFIG and target == "config":
            problems.append(f"{where}: {unit} takes plain values, never a config object")
    return problems


def _ranked_below(target: str, unit: str) -> bool:
    order = INTRA_LAYER_ORDER
    return target in order and unit in order and order[target] < order[unit]


def library_modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_the_walk_sees_the_package() -> None:
    names = {module_name(path) for path in library_modules()}
    assert {"", "config", "errors", "layout"} <= names


@pytest.mark.parametrize(
    "name, source, bad",
    [
        ("generate", "from portrait.pipeline import PortraitPipeline\nfrom .errors import InputError", False),
        ("preprocess.face", "from . import image\nfrom portrait.preprocess.image import load", False),
        ("models.unet", "from .attention import Proc\nfrom ..errors import WeightsError", False),
        ("pipeline", "from portrait import __version__\nimport portrait.sampling as s", False),
        ("models.unet", "from portrait.config import SamplingConfig", True),
        ("sampling", "def f():\n    from portrait import config", True),
        ("preprocess.face", "from ..models import unet", True),
        ("emotion", "import portrait.sampling", True),
        ("errors", "import portrait.config", True),
        ("config", "from .errors import ConfigError", False),
        ("weights", "def load():\n    from portrait.pipeline import PortraitPipeline", False),
        ("tiny", "from portrait.convert import write_manifest", False),
        ("pipeline", "from portrait.weights import load_pipeline", True),
        ("convert", "from portrait.tiny import write_tiny_weights", True),
        ("weights", "from portrait.convert import convert_dice_talk", True),
        ("config", "from . import layout", True),
        ("layout", "from portrait.errors import WeightsError", False),
        ("errors", "from portrait.layout import COMPONENTS", True),
        ("", "from portrait import config", True),
        ("weights", "from portrait.utils import helper", True),
        ("utils", "x = 1", True),
    ],
)
def test_checker_flags_upward_and_sideways_imports(name: str, source: str, bad: bool) -> None:
    assert bool(violations(name, source)) is bad, violations(name, source)


def test_package_respects_the_layers() -> None:
    problems = []
    for path in library_modules():
        problems += violations(module_name(path), path.read_text(encoding="utf-8"))
    assert not problems, "\n".join(problems)


def print_calls(source: str) -> list[int]:
    return [
        node.lineno
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"
    ]


def test_print_detector() -> None:
    assert print_calls("def f():\n    print('x')\n") == [2]
    assert print_calls("log.info('print(x)')\npprint = 1\n") == []


def test_library_does_not_print() -> None:
    offenders = [
        f"portrait/{path.relative_to(PACKAGE)}:{line}"
        for path in library_modules()
        if unit_of(module_name(path)) not in MAY_PRINT
        for line in print_calls(path.read_text(encoding="utf-8"))
    ]
    assert not offenders, "use logging.getLogger(__name__) instead of print: " + ", ".join(offenders)


def test_light_modules_do_not_import_torch() -> None:
    code = (
        "import sys, portrait, portrait.config, portrait.errors, portrait.layout\n"
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
