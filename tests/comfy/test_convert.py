"""The node pack's pure parts without ComfyUI: tensor ↔ file conversions, the CLI-equal config and job,
progress and cancel, error lines, the engine handle and ComfyUI's unload hooks."""

from __future__ import annotations

import argparse
import types

import numpy as np
import pytest
import soundfile as sf
import torch
from media import SPEECH
from PIL import Image

from portrait.cli.generate import add_generate_arguments, config_values
from portrait.comfy import engines
from portrait.comfy.analysis import track_from_file
from portrait.comfy.convert import (
    audio_waveform,
    image_to_uint8,
    read_png_frames,
    save_png,
    save_wav,
    trimmed_audio,
    uint8_to_image,
    write_clip,
)
from portrait.comfy.engines import LoaderSettings, handle_for, install_unload_hooks
from portrait.comfy.messages import PortraitNodeError, scrub_paths, user_errors
from portrait.comfy.render import RenderRequest, step_callback
from portrait.config import load_config, with_values
from portrait.errors import HINT_FACE_BOX, InputError, NoFaceError
from portrait.preprocess.audio import load_audio


def comfy_image(pixels: np.ndarray) -> torch.Tensor:
    """What ComfyUI's LoadImage makes of 8-bit pixels: float32 ``k / 255``."""
    return torch.from_numpy(pixels.astype(np.float32) / 255.0)


def test_every_8_bit_value_survives_the_round_trip():
    pixels = np.arange(256 * 3, dtype=np.int64).reshape(1, 16, 16, 3) % 256
    pixels = pixels.astype(np.uint8)
    assert np.array_equal(image_to_uint8(comfy_image(pixels)), pixels)
    assert torch.equal(uint8_to_image(pixels), comfy_image(pixels))


def test_grey_and_alpha_images_become_rgb():
    grey = torch.full((2, 4, 5, 1), 0.5)
    rgba = torch.rand(1, 4, 5, 4)
    assert image_to_uint8(grey).shape == (2, 4, 5, 3)
    assert np.array_equal(image_to_uint8(rgba), image_to_uint8(rgba[..., :3]))


@pytest.mark.parametrize(
    ("image", "words"),
    [
        (torch.rand(4, 5, 3), "(B, H, W, C)"),
        (torch.rand(0, 4, 5, 3), "empty"),
        (torch.rand(1, 4, 5, 2), "1, 3 or 4 channels"),
        (torch.full((1, 2, 2, 3), float("nan")), "NaN"),
        (torch.zeros(1, 2, 2, 3, dtype=torch.uint8), "float"),
    ],
)
def test_bad_images_are_input_errors(image, words):
    with pytest.raises(InputError) as caught:
        image_to_uint8(image, "portrait")
    assert words in str(caught.value) and "portrait" in str(caught.value)


def test_png_files_keep_the_pixels_and_frames_come_back_in_order(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (3, 6, 7, 3), dtype=np.uint8)
    for i in range(3):
        save_png(comfy_image(pixels), tmp_path / f"frame_{i:06d}.png", index=i)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "frame_000001.png")), pixels[1])
    assert torch.equal(read_png_frames(tmp_path), comfy_image(pixels))
    with pytest.raises(InputError, match="no frames"):
        read_png_frames(tmp_path / "empty")


def test_a_comfyui_audio_decodes_to_the_same_samples_as_its_file(tmp_path):
    """LoadAudio gives int16 / 2^15; the float WAV the node writes decodes (ffmpeg, the CLI's path) to the
    same 16 kHz samples as the original file: the node's render hears what the CLI hears."""
    samples, rate = sf.read(SPEECH, dtype="int16", always_2d=True)
    stereo = np.concatenate([samples, samples[::-1]], axis=1)  # two channels, mixed to mono by both paths
    original = tmp_path / "original.wav"
    sf.write(original, stereo, rate, subtype="PCM_16")
    waveform = torch.from_numpy(stereo.T.astype(np.float32) / 2**15)[None]
    written = save_wav({"waveform": waveform, "sample_rate": rate}, tmp_path / "node.wav")
    assert sf.info(written).subtype == "FLOAT"
    np.testing.assert_array_equal(load_audio(written), load_audio(original))


def test_audio_checks_and_trimming():
    waveform = torch.linspace(-1, 1, 2 * 16000).reshape(1, 2, 16000)
    audio = {"waveform": waveform, "sample_rate": 16000}
    samples, rate = audio_waveform(audio)
    assert samples.shape == (16000, 2) and rate == 16000
    cut = trimmed_audio(audio, 0.5)
    assert cut["waveform"].shape == (1, 2, 8000) and cut["sample_rate"] == 16000
    assert trimmed_audio(audio, 9.0)["waveform"].shape[-1] == 16000
    bad_inputs = [
        {"waveform": waveform},
        {"waveform": waveform[0], "sample_rate": 16000},
        {"waveform": waveform[..., :0], "sample_rate": 16000},
        {"waveform": waveform, "sample_rate": 0},
        {"waveform": waveform * float("inf"), "sample_rate": 16000},
    ]
    for bad in bad_inputs:
        with pytest.raises(InputError):
            audio_waveform(bad)


def test_a_clip_of_frames_is_an_mp4_and_one_frame_a_png(tmp_path):
    from portrait.preprocess.video import iter_frames, probe_video

    frames = np.random.default_rng(1).integers(0, 256, (5, 33, 41, 3), dtype=np.uint8)
    clip = write_clip(frames, 25.0, tmp_path / "clip.mp4")
    info = probe_video(clip)
    assert (info.width, info.height) == (40, 32)  # odd sizes lose a row and a column
    assert len(list(iter_frames(clip))) == 5
    still = write_clip(frames[:1], 25.0, tmp_path / "still.mp4")
    assert still.suffix == ".png" and np.array_equal(np.asarray(Image.open(still)), frames[0])


def cli_config(*flags: str):
    """The config ``portrait-gen`` builds from ``flags``."""
    parser = argparse.ArgumentParser()
    add_generate_arguments(parser)
    args = parser.parse_args(["--image", "p.png", "--audio", "a.wav", *flags])
    return load_config(values=config_values(args))


def test_the_nodes_build_the_clis_config():
    assert with_values(LoaderSettings().config(), RenderRequest().config_values()) == cli_config()
    request = RenderRequest(steps=7, seed=3, ref_scale=2.5, emo_scale=8.0, size=128, framing="crop",
                            interpolate=False)  # fmt: skip
    loader = LoaderSettings(weights="/w", device="cpu", dtype="fp32")
    flags = "--steps 7 --seed 3 --ref-scale 2.5 --emo-scale 8 --size 128 --crop --no-full-frame"
    flags += " --no-interpolate --weights /w --device cpu --dtype fp32"
    assert with_values(loader.config(), request.config_values()) == cli_config(*flags.split())


@pytest.mark.parametrize(
    ("emotion", "intensity", "spec"),
    [("sad", 1.0, "sad"), ("sad", 0.6, "sad:0.6"), (" happy ", 1.5, "happy:1.5"), ("", 1.0, "neutral"),
     ("0:neutral, 2.5:happy:0.8", 1.0, "0:neutral, 2.5:happy:0.8")],
)  # fmt: skip
def test_emotion_spec(emotion, intensity, spec):
    assert RenderRequest(emotion=emotion, intensity=intensity).emotion_spec() == spec


def test_intensity_with_a_mixture_is_refused():
    with pytest.raises(InputError, match="leave intensity at 1"):
        RenderRequest(emotion="happy:0.6+sad:0.4", intensity=0.5).emotion_spec()


def test_progress_moves_with_each_step_and_cancel_stops_between_steps():
    seen: list[tuple[int, int]] = []

    class Interrupted(Exception):
        pass

    def cancel() -> None:
        if len(seen) == 3:
            raise Interrupted

    callback = step_callback(lambda done, total: seen.append((done, total)), cancel)
    with pytest.raises(Interrupted):
        for step in range(10):
            callback(step, 10, torch.zeros(1))
    assert seen == [(1, 10), (2, 10), (3, 10)]


def test_a_library_error_is_one_line_with_the_nodes_hint():
    with pytest.raises(PortraitNodeError) as caught:
        with user_errors("Portrait Render"):
            raise NoFaceError("no face found in portrait.png", hint=HINT_FACE_BOX)
    text = str(caught.value)
    assert text == "Portrait Render: no face found in portrait.png; give the face position in Portrait " \
        "Render's face_box (X,Y,W,H)"  # fmt: skip
    assert caught.value.__suppress_context__
    with pytest.raises(KeyError):  # a bug is not a user's mistake: it keeps its type and traceback
        with user_errors("Portrait Render"):
            raise KeyError("x")


def test_work_folder_paths_are_left_out_of_messages(tmp_path):
    err = scrub_paths(InputError(f"{tmp_path}/portrait.png: no face in {tmp_path}"), tmp_path)
    assert str(err) == "portrait.png: no face in the work folder"


def test_track_files_come_from_the_input_folder_only(tmp_path):
    (tmp_path / "inputs").mkdir()
    (tmp_path / "secret.json").write_text("{}")
    for name in ("../secret.json", str(tmp_path / "secret.json"), "track.txt"):
        with pytest.raises(InputError, match="input folder"):
            track_from_file(name, tmp_path / "inputs")


class FakeEngine:
    def __init__(self, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.detector = None


def test_one_engine_per_settings_loaded_once_and_again_after_a_release():
    loads: list[str] = []

    def loader(cfg, detector):
        loads.append(detector)
        return FakeEngine()

    settings = LoaderSettings(weights="/nowhere/a", detector="dlib")
    handle = handle_for(settings, loader)
    assert handle_for(LoaderSettings(weights="/nowhere/a", detector="dlib")) is handle
    assert handle.engine() is handle.engine() and loads == ["dlib"]
    assert handle_for(LoaderSettings(weights="/nowhere/b"), loader) is not handle
    assert handle.release() and not handle.loaded and not handle.release()
    handle.engine()
    assert loads == ["dlib", "dlib"]


def test_comfyuis_unload_requests_release_our_engines():
    handle = handle_for(LoaderSettings(weights="/nowhere/hooks"), lambda cfg, d: FakeEngine())
    calls: list[str] = []
    free = {"bytes": 10.0}
    comfy_mm = types.SimpleNamespace(
        unload_all_models=lambda: calls.append("unload_all"),
        free_memory=lambda required, device, keep_loaded=(): calls.append("free"),
        get_free_memory=lambda device=None: free["bytes"],
    )
    install_unload_hooks(comfy_mm)
    install_unload_hooks(comfy_mm)  # twice: still one wrapper
    handle.engine()
    comfy_mm.free_memory(5.0, torch.device("cpu"))  # enough was freed without us
    assert handle.loaded and calls == ["free"]
    comfy_mm.free_memory(50.0, torch.device("cuda"))  # short, but our engine is on another device
    assert handle.loaded
    comfy_mm.free_memory(50.0, torch.device("cpu"))
    assert not handle.loaded
    handle.engine()
    comfy_mm.unload_all_models()
    assert not handle.loaded and calls == ["free", "free", "free", "unload_all"]


def test_a_bad_loader_setting_fails_at_the_loader():
    from portrait.errors import ConfigError

    with pytest.raises(ConfigError, match="window_batch"):
        handle_for(LoaderSettings(window_batch=0))


def test_handles_do_not_keep_engines_alive_by_themselves():
    import gc

    handle = handle_for(LoaderSettings(weights="/nowhere/weak"), lambda cfg, d: FakeEngine())
    key = handle.settings
    del handle
    gc.collect()
    assert key not in engines._handles  # ComfyUI's cache holds the handle; dropping it frees the engine
