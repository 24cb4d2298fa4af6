"""Write tests/fixtures/eval_reference.{json,npz}: what the reference evaluation code gives on fixed inputs.

One-off script (not part of the package or CI). It runs the reference implementations themselves, unchanged,
on small seeded inputs with seeded random weights saved in each reference's own file layout, and records
their outputs; the tests rebuild the same inputs and weights (``portrait.testing.random_state``) and compare
portrait's numbers with these. Nothing of the references' code is copied into portrait.

References (clone them into one folder, ``--refs``):

* ``joonson/syncnet_python`` (``SyncNetInstance.evaluate``, ``run_pipeline.py``'s ``track_shot`` and
  ``crop_video``) with ``python_speech_features``;
* ``Rudrabha/Wav2Lip`` (``evaluation/scores_LSE/SyncNetInstance_calc_scores.py``: LSE-D / LSE-C, and its
  whole-frame resize of ``calculate_scores_LRS.py``);
* ``mseitzer/pytorch-fid`` (``InceptionV3``, ``get_activations``, ``calculate_frechet_distance``);
* ``JunyaoHu/common_metrics_on_video_quality`` (``fvd/videogpt``: VideoGPT's ``InceptionI3d``, preprocessing
  and Fréchet distance) and ``wilson1yan/VideoGPT`` (the same I3D, recorded for provenance).

Their file I/O is replaced by the inputs in memory: ``ffmpeg`` calls return 0, ``glob`` lists the frames,
``cv2.imread`` returns them (BGR, as it would), ``wavfile.read`` returns the int16 audio, the crop video
writer keeps the crops (before XVID compression); ``.cuda()`` is the identity (CPU).

Environment: a separate venv with torch 2.13.0 (CPU), torchvision (its C operators skipped, as
``../shared/tools/comfyui`` does), numpy, scipy, python_speech_features, opencv-python-headless, einops.

Usage: python scripts/eval_reference_fixtures.py --refs /tmp/refs [--out tests/fixtures]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import types
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the LSE half beside this script

from eval_reference_lse import (  # noqa: E402
    CASES,
    REPOS,
    ROOT,
    as_tensors,
    commit_of,
    mfcc_case,
    recipe_module,
    state_shapes,
    tracked_case,
    tracking_case,
    whole_frame_case,
)

# ------------------------------------------------------------------------------------------------------------
# FID Inception, FVD I3D, Fréchet distances
# ------------------------------------------------------------------------------------------------------------


def inception_case(refs: Path, recipe: types.ModuleType, tmp: Path, out: dict, arrays: dict) -> None:
    from PIL import Image

    sys.path.insert(0, str(refs / REPOS["pytorch_fid"] / "src"))
    import pytorch_fid
    import pytorch_fid.fid_score as fid_score
    import pytorch_fid.inception as inception

    holder: dict = {}
    original = torch.nn.Module.load_state_dict
    torch.nn.Module.load_state_dict = lambda self, state, *a, **k: holder.setdefault("model", self)
    inception.load_state_dict_from_url = lambda *a, **k: None
    inception.fid_inception_v3()  # builds the FID Inception; its weights file is replaced below
    torch.nn.Module.load_state_dict = original
    shapes = state_shapes(holder["model"])
    state = as_tensors(recipe.random_state(shapes, CASES["seeds"]["inception"]))
    torch.save(state, tmp / "pt_inception-2015-12-05-6726825d.pth")
    inception.load_state_dict_from_url = lambda *a, **k: torch.load(
        tmp / "pt_inception-2015-12-05-6726825d.pth", weights_only=True
    )
    model = inception.InceptionV3([inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    case, stats = CASES["inception"], []
    for name, seed in zip("ab", case["pixels_seed"], strict=True):
        files = []
        for i, image in enumerate(recipe.random_scene(seed, case["shape"])):
            files.append(tmp / f"{name}{i}.png")
            Image.fromarray(image).save(files[-1])
        features = fid_score.get_activations(files, model, batch_size=len(files), dims=2048, num_workers=0)
        arrays[f"inception_features_{name}"] = features
        stats.append((np.mean(features, axis=0), np.cov(features, rowvar=False)))
    fid = fid_score.calculate_frechet_distance(*stats[0], *stats[1])
    out["inception"] = {"shapes": shapes, "fid": float(fid), "pytorch_fid": pytorch_fid.__version__}


def i3d_case(refs: Path, recipe: types.ModuleType, tmp: Path, out: dict, arrays: dict) -> None:
    base = refs / REPOS["common_metrics"]
    sys.path.insert(0, str(base))
    from fvd.videogpt import fvd
    from fvd.videogpt.pytorch_i3d import InceptionI3d

    shapes = state_shapes(InceptionI3d(400, in_channels=3))
    state = as_tensors(recipe.random_state(shapes, CASES["seeds"]["i3d"]))
    weights = base / "fvd" / "videogpt" / "i3d_pretrained_400.pt"
    torch.save(state, weights)  # the layout of VideoGPT's i3d_pretrained_400.pt (a state dict)
    i3d = fvd.load_i3d_pretrained(torch.device("cpu"))
    case, feats = CASES["i3d"], []
    for name, seed in zip("ab", case["pixels_seed"], strict=True):
        videos = torch.from_numpy(recipe.random_scene(seed, case["shape"])).float() / 255  # B T H W C
        videos = videos.permute(0, 4, 1, 2, 3)  # B C T H W in [0, 1], as calculate_fvd passes them
        feats.append(fvd.get_fvd_logits(videos, i3d=i3d, device=torch.device("cpu")))
        arrays[f"i3d_logits_{name}"] = feats[-1].double().numpy()
    fvd32 = fvd.frechet_distance(feats[0].clone(), feats[1].clone())
    fvd64 = fvd.frechet_distance(feats[0].double(), feats[1].double())
    out["i3d"] = {"shapes": shapes, "fvd_float32": float(fvd32), "fvd_float64": float(fvd64)}
    weights.unlink()


def frechet_case(refs: Path, out: dict, arrays: dict) -> None:
    """pytorch-fid's and VideoGPT's Fréchet distances on well-conditioned features (N > D)."""
    import pytorch_fid.fid_score as fid_score
    from fvd.videogpt import fvd

    case = CASES["frechet"]
    rng = np.random.default_rng(case["seed"])
    a = rng.standard_normal((case["sizes"][0], case["dims"]))
    b = 0.3 + rng.standard_normal((case["sizes"][1], case["dims"])) @ (
        0.2 * rng.standard_normal((case["dims"],) * 2)
    )
    arrays["frechet_a"], arrays["frechet_b"] = a, b
    stats = [(x.mean(axis=0), np.cov(x, rowvar=False)) for x in (a, b)]
    fid = fid_score.calculate_frechet_distance(*stats[0], *stats[1])
    videogpt = fvd.frechet_distance(torch.from_numpy(a.copy()), torch.from_numpy(b.copy()))
    out["frechet"] = {"pytorch_fid": float(fid), "videogpt_float64": float(videogpt)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refs", type=Path, required=True, help="folder with the reference clones")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    recipe = recipe_module()
    out: dict = {
        "cases": CASES,
        "references": {k: commit_of(args.refs / v) for k, v in REPOS.items()},
        "versions": {name: version(name) for name in VERSIONED},
        "same_i3d_file": _same_i3d(args.refs),
    }
    arrays: dict = {}
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        mfcc_case(recipe, out, arrays)
        whole_frame_case(args.refs, recipe, tmp, out, arrays)
        tracked_case(args.refs, recipe, tmp, out, arrays)
        tracking_case(args.refs, recipe, tmp, out)
        inception_case(args.refs, recipe, tmp, out, arrays)
        i3d_case(args.refs, recipe, tmp, out, arrays)
        frechet_case(args.refs, out, arrays)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "eval_reference.json").write_text(json.dumps(out, indent=1, default=_plain) + "\n")
    np.savez_compressed(args.out / "eval_reference.npz", **arrays)
    print(json.dumps({k: v for k, v in out.items() if k in ("whole_frame", "references")}, default=_plain))
    return 0


VERSIONED = ("torch", "torchvision", "numpy", "scipy", "python_speech_features", "opencv-python-headless")


def _same_i3d(refs: Path) -> bool:
    """Whether VideoGPT's pytorch_i3d.py and common_metrics' copy are the same code (up to whitespace)."""
    a = (refs / REPOS["videogpt"] / "videogpt" / "fvd" / "pytorch_i3d.py").read_text().split()
    b = (refs / REPOS["common_metrics"] / "fvd" / "videogpt" / "pytorch_i3d.py").read_text().split()
    return a == b


def _plain(value: object) -> object:
    if isinstance(value, set):
        return sorted(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(type(value))


if __name__ == "__main__":
    sys.exit(main())
