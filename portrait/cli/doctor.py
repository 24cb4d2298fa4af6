"""The ``doctor`` subcommand: a checklist of ffmpeg, the weights tree and its hashes, the device, versions.

Every check is guarded: a broken install becomes a failed line of the checklist, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from portrait import __version__
from portrait.cli.common import add_weights_argument
from portrait.constants import EXIT_ERROR, EXIT_OK
from portrait.errors import PortraitError
from portrait.layout import MANIFEST_FILE, OPTIONAL_COMPONENTS

#: Packages whose versions ``doctor`` reports; the first three are required.
REQUIRED_PACKAGES = ("torch", "diffusers", "transformers")
OTHER_PACKAGES = ("huggingface_hub", "safetensors", "numpy", "accelerate")


@dataclass(frozen=True)
class Check:
    """One line of the doctor's checklist.

    Attributes:
        name: what was checked.
        ok: the check passed (informational lines are always ok).
        detail: what was found, or what is wrong and how to fix it.
        required: a failure makes ``doctor`` exit 1; an optional failure is only a warning.
    """

    name: str
    ok: bool
    detail: str
    required: bool = True

    def line(self) -> str:
        mark = "ok" if self.ok else "FAIL" if self.required else "warn"
        return f"[{mark:>4}] {self.name}: {self.detail}"


def _guard(name: str, check: Callable[[], Check]) -> Check:
    """Run one check; any error (a PortraitError, a broken install, a corrupt file whose reader raises its
    own error type) becomes a failed check that names it, never a traceback."""
    try:
        return check()
    except Exception as err:  # noqa: BLE001 - the doctor reports every failure as a line
        detail = " ".join(str(err).split()) or "no message"
        if not isinstance(err, PortraitError):
            detail = f"{type(err).__name__}: {detail}"
        return Check(name, False, detail)


def _check_ffmpeg() -> Check:
    from portrait.ffmpeg import ffmpeg_binary, run_ffmpeg

    binary = ffmpeg_binary()
    lines = run_ffmpeg(["-version"], timeout=30).stdout.decode(errors="replace").splitlines()
    return Check("ffmpeg", True, f"{binary} ({lines[0] if lines else 'unknown version'})")


def _check_tree(root: Path) -> Check:
    from portrait.weights.load import missing_files

    if not root.is_dir():
        return Check(
            "weights tree", False, f"{root} does not exist; run `portrait-gen download --weights {root}`"
        )
    missing = missing_files(root)
    if missing:
        return Check(
            "weights tree",
            False,
            f"{root} is missing {', '.join(missing)}; run `portrait-gen download --weights {root}`",
        )
    return Check("weights tree", True, f"{root} complete")


def _check_manifest(root: Path) -> Check:
    import json

    from portrait.weights.load import verify_manifest

    bad = verify_manifest(root)
    if bad:
        return Check(
            "weights hashes",
            False,
            f"{len(bad)} file(s) missing or differing from {MANIFEST_FILE}: {', '.join(bad)}; re-download "
            f"with `portrait-gen download --weights {root}`",
        )
    count = len(json.loads((root / MANIFEST_FILE).read_text())["files"])
    return Check("weights hashes", True, f"{count} files match {MANIFEST_FILE}")


def _check_emotions(root: Path) -> Check:
    from portrait.layout import EMOTIONS_DIR
    from portrait.weights.load import load_emotion_bank

    bank = load_emotion_bank(root)  # an unreadable custom prior is left out (a release one raises)
    files = sorted(p.stem for p in (root / EMOTIONS_DIR).glob("*.safetensors"))
    skipped = [name for name in files if name not in bank]
    if skipped:
        detail = f"{len(bank)} usable; unreadable custom emotion(s) left out: {', '.join(skipped)} "
        return Check("emotion priors", False, detail + "(remove and add them again)", required=False)
    return Check("emotion priors", True, f"{len(bank)}: {', '.join(bank)}")


def _optional_checks(root: Path) -> list[Check]:
    from portrait.weights.load import has_component
    from portrait.weights.sources import FACE_DETECTOR_DIR, YOLO_FILE

    checks = []
    for comp in OPTIONAL_COMPONENTS:
        present = has_component(root, comp.name) and (root / comp.name / str(comp.weights_file)).is_file()
        checks.append(
            Check(comp.name, present, "present" if present else "absent (optional)", required=False)
        )
    yolo = root / FACE_DETECTOR_DIR / YOLO_FILE
    checks.append(
        Check("face_detector", yolo.is_file(), "present" if yolo.is_file() else "absent (optional)", False)
    )
    return checks


def _check_face_detection(root: Path) -> Check:
    from portrait.weights.sources import FACE_DETECTOR_DIR, YOLO_FILE

    found = []
    if (root / FACE_DETECTOR_DIR / YOLO_FILE).is_file():
        found.append("yolo")
    try:
        importlib.import_module("dlib")
    except ImportError as err:
        dlib = f"dlib not importable ({err})"
    else:
        dlib = "dlib importable"
        found.append("dlib")
    if not found:
        return Check(
            "face detection",
            False,
            f"{dlib} and no {FACE_DETECTOR_DIR}/{YOLO_FILE}: `pip install dlib-bin` or run "
            "`portrait-gen download`",
        )
    return Check("face detection", True, f"{dlib}; detectors: {', '.join(found)}")


def _check_expression_classifier() -> Check:
    from portrait.weights.expression_classifier import verify_packaged_classifier

    return Check("expression classifier", True, verify_packaged_classifier())


def _check_versions() -> list[Check]:
    checks = [Check("python", True, sys.version.split()[0]), Check("portrait", True, __version__)]
    for name in REQUIRED_PACKAGES + OTHER_PACKAGES:
        try:
            checks.append(Check(name, True, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            required = name in REQUIRED_PACKAGES
            checks.append(Check(name, False, f"not installed: pip install {name}", required=required))
    return checks


def _check_device() -> Check:
    import torch

    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return Check("device", True, f"CUDA {torch.version.cuda}: {', '.join(names)}")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return Check("device", True, "Apple MPS (no CUDA)")
    return Check("device", True, "CPU only (no CUDA device): generation works but is very slow")


def doctor_checks(root: Path) -> list[Check]:
    """Every check of ``portrait-gen doctor`` for the weights tree ``root``, in display order."""
    tree = _guard("weights tree", lambda: _check_tree(root))
    checks = [_guard("ffmpeg", _check_ffmpeg), tree]
    if tree.ok:
        checks.append(_guard("weights hashes", lambda: _check_manifest(root)))
        checks.append(_guard("emotion priors", lambda: _check_emotions(root)))
    checks += _optional_checks(root)
    checks.append(_guard("face detection", lambda: _check_face_detection(root)))
    checks.append(_guard("expression classifier", _check_expression_classifier))
    checks += _check_versions()
    checks.append(_guard("device", _check_device))
    return checks


def add_doctor_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``portrait-gen doctor``."""
    add_weights_argument(parser, "weights tree to check")


def run_doctor(args: argparse.Namespace) -> int:
    """Print the checklist; 0 when every required check passes, else 1 (the failures listed again)."""
    from portrait.weights.load import resolve_weights_root

    checks = doctor_checks(resolve_weights_root(args.weights))
    for check in checks:
        print(check.line())
    failed = [c for c in checks if c.required and not c.ok]
    if failed:
        print(f"\n{len(failed)} required check(s) failed:")
        for check in failed:
            print(f"  - {check.name}: {check.detail}")
        return EXIT_ERROR
    print("\nall required checks passed")
    return EXIT_OK
