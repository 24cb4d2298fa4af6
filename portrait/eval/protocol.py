"""The protocol recorded with every number: two numbers are comparable only when their protocols match.

Each metric that papers report carries ``"protocol": {...}``: the implementation (portrait's version and the
reference it follows), the weights (sha256 of the converted file and of the published file it came from,
whether a pinned hash verified it), the detector and crop rule, the frame rate and resolution, how frames were
sampled and how many were used. The builders here only assemble those facts; the metrics fill in the counts.
"""

from __future__ import annotations

from typing import Any

from portrait import __version__
from portrait.eval.lse import LSESettings

#: What each protocol follows, by name.
REFERENCES = {
    "tracked": "syncnet_python run_pipeline.py + Wav2Lip evaluation/scores_LSE calculate_scores_real_videos",
    "whole-frame": "Wav2Lip evaluation/scores_LSE/calculate_scores_LRS.py",
    "fid": "pytorch-fid 0.3.0 (InceptionV3 FID blocks, pool3 2048-d, calculate_frechet_distance)",
    "fvd": "VideoGPT / common_metrics_on_video_quality fvd/videogpt (I3D Kinetics-400 logits)",
}
TRACKED_CROP = (
    "run_pipeline crop_video: box centre and half-size median-filtered over 13 frames; square of 1.4x the "
    "box, centre 0.2 box sides below the box centre; grey 110 outside the frame; cv2.resize to 224x224"
)
WHOLE_FRAME_CROP = "whole frame cv2.resize to 224x224 (bilinear), no detection"
AUDIO = "16 kHz mono on the int16 scale (x32768), python_speech_features MFCC (13 coefficients, 100 Hz)"


def implementation(module: str) -> str:
    """``"portrait <version> <module>"``."""
    return f"portrait {__version__} {module}"


def _video(fps: float, source: dict[str, Any]) -> dict[str, Any]:
    return {"fps": fps, "source_fps": source.get("fps"), "resolution": source.get("resolution")}


def lse_protocol(
    settings: LSESettings, weights: dict[str, Any], detector: str | None, fps: float, source: dict[str, Any]
) -> dict[str, Any]:
    """The protocol of LSE-C / LSE-D (``source``: the video's ``fps`` and ``resolution`` as decoded)."""
    tracked = settings.protocol == "tracked"
    out = {
        "name": f"lse/{settings.protocol}",
        "reference": REFERENCES[settings.protocol],
        "implementation": implementation("portrait.eval.lse"),
        "weights": weights,
        "detector": detector if tracked else None,
        "crop": TRACKED_CROP if tracked else WHOLE_FRAME_CROP,
        "audio": AUDIO,
        **_video(fps, source),
        "frame_sampling": "every frame; 5-frame windows against 20 MFCC columns, offsets -15..15",
    }
    if tracked:
        out["track_rules"] = settings.rules.describe()
    return out


def fid_protocol(weights: dict[str, Any], fps: float, every: int) -> dict[str, Any]:
    """The protocol of FID over whole frames."""
    return {
        "name": "fid/frames",
        "reference": REFERENCES["fid"],
        "implementation": implementation("portrait.eval.features.InceptionFeatures"),
        "weights": weights,
        "input": "whole frames at the video's resolution, /255, bilinear 299x299 (no align_corners), [-1, 1]",
        "fps": fps,
        "frame_sampling": "every frame" if every == 1 else f"every {every}th frame",
    }


def fvd_protocol(weights: dict[str, Any], fps: float, clip_frames: int) -> dict[str, Any]:
    """The protocol of FVD over consecutive clips."""
    return {
        "name": f"fvd/clips{clip_frames}",
        "reference": REFERENCES["fvd"],
        "implementation": implementation("portrait.eval.features.I3DFeatures"),
        "weights": weights,
        "input": "shorter side bilinear to 224, centre crop 224x224, [-1, 1]; 400 logits (BN eps 1e-5)",
        "fps": fps,
        "frame_sampling": f"consecutive non-overlapping {clip_frames}-frame clips; a shorter tail is dropped",
    }


def csim_protocol(embedder: str, arcface: bool, every: int) -> dict[str, Any]:
    """The protocol of CSIM; says in the output whether the number can sit next to papers' (ArcFace) CSIM."""
    note = (
        "ArcFace (insightface buffalo_l) cosine similarity, what papers report as CSIM"
        if arcface
        else "dlib 128-d embedding: NOT comparable with papers' CSIM (ArcFace); install the ArcFace weights "
        "with `portrait-gen download --eval`"
    )
    return {
        "name": "csim/arcface" if arcface else "csim/dlib",
        "embedder": embedder,
        "comparable_with_papers": arcface,
        "note": note,
        "frame_sampling": f"every {every}th frame with a face, against the reference portrait",
    }
