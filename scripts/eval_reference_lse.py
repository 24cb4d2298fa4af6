"""The LSE half of scripts/eval_reference_fixtures.py (see its docstring), and what both halves share.

syncnet_python's ``SyncNetInstance.evaluate`` (and Wav2Lip's copy) on whole frames and on the crops of
``run_pipeline.py``'s ``track_shot`` / ``crop_video``, and ``python_speech_features.mfcc``; their file I/O
replaced by the inputs in memory. Run only through the fixture script, in the reference environment.
"""

from __future__ import annotations

import argparse
import ast
import copy
import importlib.util
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
REPOS = {
    "syncnet_python": "joonson+syncnet_python",
    "wav2lip": "Rudrabha+Wav2Lip",
    "pytorch_fid": "mseitzer+pytorch-fid",
    "common_metrics": "JunyaoHu+common_metrics_on_video_quality",
    "videogpt": "wilson1yan+VideoGPT",
}
#: Seeds and sizes of the inputs; the tests read them back from the JSON.
CASES = {
    "seeds": {"syncnet": 11, "inception": 12, "i3d": 13},
    "syncnet_scales": {
        "netcnnlip.0.weight": 1 / 128,
        "netcnnaud.0.weight": 1 / 10,
        "netfclip.3.weight": 0.1,
        "netfcaud.3.weight": 0.1,
    },
    "mfcc": {"audio_seed": 21, "samples": 21760},
    "whole_frame": {"pixels_seed": 22, "shape": [26, 96, 128, 3], "audio_seed": 23},
    "tracked": {"pixels_seed": 24, "shape": [34, 120, 160, 3], "audio_seed": 25, "detections_seed": 26},
    "tracked_opt": {"min_track": 10, "num_failed_det": 25, "min_face_size": 20, "crop_scale": 0.4},
    "tracking": {"pixels_seed": 27, "shape": [140, 260, 300, 3], "detections_seed": 28},
    "tracking_opt": {"min_track": 100, "num_failed_det": 25, "min_face_size": 100, "crop_scale": 0.4},
    "inception": {"pixels_seed": [31, 32], "shape": [6, 64, 80, 3]},
    "i3d": {"pixels_seed": [33, 34], "shape": [3, 16, 64, 80, 3]},
    "frechet": {"seed": 35, "sizes": [300, 250], "dims": 48},
}


def _module(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def recipe_module() -> types.ModuleType:
    return _module("random_state", ROOT / "portrait" / "testing" / "random_state.py")


def commit_of(path: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()


def as_tensors(state: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {key: torch.from_numpy(value) for key, value in state.items()}


def state_shapes(module: torch.nn.Module) -> dict[str, list[int]]:
    return {key: list(value.shape) for key, value in module.state_dict().items()}


# ------------------------------------------------------------------------------------------------------------
# SyncNet: MFCC, evaluate() on whole frames and on tracked crops
# ------------------------------------------------------------------------------------------------------------


class _FakeIO:
    """Frames and audio in memory behind the names the reference code reads (see the module docstring)."""

    def __init__(self, frames_rgb: np.ndarray, audio: np.ndarray) -> None:
        self.frames = [np.ascontiguousarray(f[:, :, ::-1]) for f in frames_rgb]  # cv2.imread gives BGR
        self.audio = audio
        self.written: list[np.ndarray] = []

    def install(self, *modules: types.ModuleType) -> None:
        import cv2

        names = [f"/fake/{i + 1:06d}.jpg" for i in range(len(self.frames))]
        io = self

        class Writer:
            def __init__(self, *args: object) -> None:
                pass

            def write(self, frame: np.ndarray) -> None:
                io.written.append(frame.copy())

            def release(self) -> None:
                pass

        for module in modules:
            module.glob = types.SimpleNamespace(glob=lambda pattern: list(names))
            module.subprocess = types.SimpleNamespace(call=lambda *a, **k: 0)
            module.wavfile = types.SimpleNamespace(read=lambda path: (16000, io.audio))
        cv2.imread = lambda name: self.frames[int(Path(name).stem) - 1].copy()
        cv2.VideoWriter = Writer


def _syncnet(
    refs: Path, recipe: types.ModuleType, tmp: Path
) -> tuple[types.ModuleType, types.ModuleType, dict]:
    """The two SyncNetInstance modules (syncnet_python, Wav2Lip) and the random state they load."""
    torch.nn.Module.cuda = lambda self, *a, **k: self
    torch.Tensor.cuda = lambda self, *a, **k: self
    sys.path.insert(0, str(refs / REPOS["syncnet_python"]))
    joonson = _module("SyncNetInstance", refs / REPOS["syncnet_python"] / "SyncNetInstance.py")
    wav2lip = _module(
        "SyncNetInstance_calc_scores",
        refs / REPOS["wav2lip"] / "evaluation" / "scores_LSE" / "SyncNetInstance_calc_scores.py",
    )
    shapes = state_shapes(joonson.S())
    state = recipe.random_state(shapes, CASES["seeds"]["syncnet"], CASES["syncnet_scales"])
    torch.save(as_tensors(state), tmp / "syncnet_v2.model")  # the release's layout: a state dict of S
    return joonson, wav2lip, {"shapes": shapes, "file": tmp / "syncnet_v2.model"}


def _evaluate(module: types.ModuleType, model: Path, frames: np.ndarray, audio: np.ndarray, tmp: Path):
    instance = module.SyncNetInstance()
    instance.loadParameters(str(model))
    _FakeIO(frames, audio).install(module)
    opt = argparse.Namespace(tmp_dir=str(tmp), reference="fixture", batch_size=20, vshift=15)
    with torch.no_grad():
        return instance.evaluate(opt, videofile="/fake/video.mp4")


def whole_frame_case(refs: Path, recipe: types.ModuleType, tmp: Path, out: dict, arrays: dict) -> None:
    """Wav2Lip's calculate_scores_LRS protocol: whole frames resized to 224 (inside its evaluate)."""
    import cv2

    joonson, wav2lip, sync = _syncnet(refs, recipe, tmp)
    case = CASES["whole_frame"]
    frames = recipe.random_pixels(case["pixels_seed"], case["shape"])
    audio = recipe.random_int16(case["audio_seed"], case["shape"][0] * 640)
    offset, conf, minval = _evaluate(wav2lip, sync["file"], frames, audio, tmp)
    resized = np.stack([cv2.resize(f, (224, 224)) for f in frames])  # what joonson's evaluate needs as input
    _, conf_j, dists = _evaluate(joonson, sync["file"], resized, audio, tmp)
    assert abs(float(conf_j) - float(conf)) < 1e-6
    out["syncnet"] = {"shapes": sync["shapes"], "scales": CASES["syncnet_scales"]}
    out["whole_frame"] = {"offset": int(offset), "lse_c": float(conf), "lse_d": float(minval)}
    arrays["whole_frame_audio"], arrays["whole_frame_dists"] = audio, np.asarray(dists, dtype=np.float64)


def mfcc_case(recipe: types.ModuleType, out: dict, arrays: dict) -> None:
    import python_speech_features

    audio = recipe.random_int16(CASES["mfcc"]["audio_seed"], CASES["mfcc"]["samples"])
    audio[:800] = 0  # a silent start: the energy floor (eps) path
    arrays["mfcc_audio"] = audio
    arrays["mfcc"] = python_speech_features.mfcc(audio, 16000).T  # (13, M) as SyncNetInstance stacks it
    out["mfcc"] = {"shape": list(arrays["mfcc"].shape)}


def _pipeline(refs: Path) -> dict:
    """``bb_intersection_over_union``, ``track_shot`` and ``crop_video`` of run_pipeline.py (a script whose
    top level parses arguments and runs, so only these three definitions are executed)."""
    import cv2
    from scipy import signal
    from scipy.interpolate import interp1d

    source = (refs / REPOS["syncnet_python"] / "run_pipeline.py").read_text()
    tree = ast.parse(source)
    wanted = {"bb_intersection_over_union", "track_shot", "crop_video"}
    body = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in wanted]
    namespace = {"np": np, "interp1d": interp1d, "signal": signal, "cv2": cv2, "pdb": None}
    exec(compile(ast.Module(body=body, type_ignores=[]), "run_pipeline.py", "exec"), namespace)  # noqa: S102
    return namespace


def _detections(seed: int, faces: list[dict], frames: int) -> list[list[dict]]:
    """Per frame, the detections of each face present (jittered boxes, shuffled order)."""
    rng = np.random.default_rng(seed)
    out: list[list[dict]] = [[] for _ in range(frames)]
    for face in faces:
        for f in range(frames):
            if f in face["missing"] or not face["first"] <= f <= face["last"]:
                continue
            cx = face["cx"] + face["drift"] * f + rng.normal(0, 1.5)
            cy = face["cy"] + rng.normal(0, 1.5)
            w, h = face["size"] + rng.normal(0, 2.0, size=2)
            box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
            out[f].append({"frame": f, "bbox": [float(v) for v in box], "conf": 0.99})
    for frame in out:
        rng.shuffle(frame)
    return out


def _tracks(
    namespace: dict, detections: list[list[dict]], options: dict, frames: np.ndarray, audio, tmp: Path
):
    opt = argparse.Namespace(
        **options, frame_rate=25, frames_dir=str(tmp), reference="fixture", tmp_dir=str(tmp), avi_dir=str(tmp)
    )
    tracks = namespace["track_shot"](opt, copy.deepcopy(detections))
    io = _FakeIO(frames, audio)
    crop_module = types.SimpleNamespace()
    io.install(crop_module)
    namespace.update(
        vars(crop_module), os=types.SimpleNamespace(path=__import__("os").path, remove=lambda p: None)
    )
    results = []
    for index, track in enumerate(tracks):
        start = len(io.written)
        proc = namespace["crop_video"](opt, track, str(tmp / f"{index:05d}"))["proc_track"]
        crops = np.stack(io.written[start:])[:, :, :, ::-1]  # back to RGB
        results.append({"track": track, "proc": proc, "crops": crops})
    return results


TRACKED_FACE = [
    {"cx": 80.0, "cy": 58.0, "drift": 0.3, "size": 44.0, "first": 2, "last": 32, "missing": {15, 16, 17}}
]
TRACKING_FACES = [
    {
        "cx": 90.0,
        "cy": 130.0,
        "drift": 0.05,
        "size": 112.0,
        "first": 0,
        "last": 139,
        "missing": {40, 41, 42, 43, 44, 90},
    },
    {"cx": 92.0, "cy": 131.0, "drift": 0.05, "size": 108.0, "first": 60, "last": 62, "missing": set()},
    {"cx": 220.0, "cy": 120.0, "drift": -0.05, "size": 106.0, "first": 20, "last": 139, "missing": {70}},
    {"cx": 150.0, "cy": 40.0, "drift": 0.0, "size": 70.0, "first": 0, "last": 139, "missing": set()},
    {"cx": 250.0, "cy": 220.0, "drift": 0.0, "size": 104.0, "first": 10, "last": 60, "missing": set()},
]


def _track_record(result: dict) -> dict:
    track = result["track"]
    return {
        "frames": [int(f) for f in track["frame"]],
        "bbox": np.asarray(track["bbox"]).tolist(),
        "proc": {k: [float(v) for v in result["proc"][k]] for k in ("x", "y", "s")},
        "crop_sums": [int(c.astype(np.int64).sum()) for c in result["crops"]],
    }


def tracked_case(refs: Path, recipe: types.ModuleType, tmp: Path, out: dict, arrays: dict) -> None:
    """run_pipeline's tracking and crops, then evaluate() on the crops with the track's audio segment."""
    joonson, _, sync = _syncnet(refs, recipe, tmp)
    namespace = _pipeline(refs)
    case = CASES["tracked"]
    frames = recipe.random_pixels(case["pixels_seed"], case["shape"])
    audio = recipe.random_int16(case["audio_seed"], case["shape"][0] * 640)
    detections = _detections(case["detections_seed"], TRACKED_FACE, case["shape"][0])
    (result,) = _tracks(namespace, detections, CASES["tracked_opt"], frames, audio, tmp)
    first, last = int(result["track"]["frame"][0]), int(result["track"]["frame"][-1])
    segment = audio[first * 640 : (last + 1) * 640]  # the ffmpeg -ss/-to cut of crop_video
    offset, conf, dists = _evaluate(joonson, sync["file"], result["crops"], segment, tmp)
    mdist = dists.mean(axis=0)
    out["tracked"] = {
        "detections": detections,
        **_track_record(result),
        "offset": int(offset),
        "lse_c": float(conf),
        "lse_d": float(mdist.min()),
    }
    arrays["tracked_audio"], arrays["tracked_dists"] = audio, np.asarray(dists, dtype=np.float64)


def tracking_case(refs: Path, recipe: types.ModuleType, tmp: Path, out: dict) -> None:
    """track_shot and crop_video with the reference defaults on several faces (no SyncNet)."""
    namespace = _pipeline(refs)
    case = CASES["tracking"]
    frames = recipe.random_pixels(case["pixels_seed"], case["shape"])
    detections = _detections(case["detections_seed"], TRACKING_FACES, case["shape"][0])
    audio = np.zeros(case["shape"][0] * 640, np.int16)
    results = _tracks(namespace, detections, CASES["tracking_opt"], frames, audio, tmp)
    out["tracking"] = {"detections": detections, "tracks": [_track_record(r) for r in results]}
