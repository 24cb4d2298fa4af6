"""The DICE-Talk release converter (portrait.weights.convert) and the `portrait-gen convert` command."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from portrait.errors import WeightsError
from portrait.layout import EMOTIONS_DIR, MANIFEST_FILE, RELEASE_EMOTIONS
from portrait.testing.configs import (
    TINY_CLASSIFIER_SHAPES,
    tiny_audio_projector_config,
    tiny_emotion_config,
    tiny_pose_guider_config,
)
from portrait.testing.trees import emotion_priors
from portrait.weights.convert import ConversionReport, convert_dice_talk

REPO = Path(__file__).resolve().parents[2]
SVD = "stable-video-diffusion-img2vid-xt"


@pytest.fixture(scope="session")
def converted(release_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ConversionReport]:
    dst = tmp_path_factory.mktemp("conv") / "weights"
    return dst, convert_dice_talk(release_tree, dst)


@pytest.fixture
def release_copy(release_tree: Path, tmp_path: Path) -> Path:
    """A private copy of the release tree that a test may corrupt."""
    return Path(shutil.copytree(release_tree, tmp_path / "checkpoints"))


def _pth(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _rel_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _assert_state_equal(loaded: dict[str, torch.Tensor], source: dict[str, torch.Tensor]) -> None:
    assert loaded.keys() == source.keys()
    bad = [k for k in source if not torch.equal(loaded[k].to(source[k].dtype), source[k])]
    assert bad == []


# ---- a correct conversion ------------------------------------------------------------------------------


def test_adapter_modules_load_and_equal_their_release_files(release_tree: Path, converted) -> None:
    from portrait.models.audio import AudioProjector
    from portrait.models.emotion_model import EmotionModel
    from portrait.models.pose_guider import PoseGuider

    dst, _ = converted
    projector = AudioProjector.from_pretrained(dst / "audio_projector")
    assert dict(projector.config.items()) | tiny_audio_projector_config() == dict(projector.config.items())
    _assert_state_equal(projector.state_dict(), _pth(release_tree / "DICE-Talk" / "audio_linear.pth"))
    emotion = EmotionModel.from_pretrained(dst / "emotion_model")
    assert {k: emotion.config[k] for k in tiny_emotion_config()} == tiny_emotion_config()
    emo_src = {
        k: v
        for k, v in _pth(release_tree / "DICE-Talk" / "emo_model.pth").items()
        if k not in TINY_CLASSIFIER_SHAPES
    }
    _assert_state_equal(emotion.state_dict(), emo_src)
    guider = PoseGuider.from_pretrained(dst / "pose_guider")
    assert list(guider.config.block_out_channels) == list(tiny_pose_guider_config()["block_out_channels"])
    _assert_state_equal(guider.state_dict(), _pth(release_tree / "DICE-Talk" / "pose_guider.pth"))


def test_unet_loads_with_every_adapter_key_from_unet_pth(release_tree: Path, converted) -> None:
    from portrait.models.unet import PortraitUNet

    dst, report = converted
    unet = PortraitUNet.from_pretrained(dst / "unet")
    assert tuple(unet.config.adapter_tokens) == (32, 32) and tuple(unet.config.adapter_scales) == (1.0, 1.0)
    state = unet.state_dict()
    assert sum(".processor.to_k_ip." in k or ".processor.to_v_ip." in k for k in state) == 32
    _assert_state_equal(state, _pth(release_tree / "DICE-Talk" / "unet.pth"))
    assert report.components["unet"].filled == {}
    assert report.components["unet"].dtype == "float32"  # the dtype of unet.pth, not of the fp16 SVD base


def test_svd_and_whisper_components_load_and_equal_their_sources(release_tree: Path, converted) -> None:
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler
    from transformers import CLIPVisionModelWithProjection, WhisperFeatureExtractor, WhisperModel

    dst, report = converted
    svd = release_tree / SVD
    vae_src = load_file(svd / "vae" / "diffusion_pytorch_model.fp16.safetensors")
    assert {t.dtype for t in load_file(dst / "vae" / "diffusion_pytorch_model.safetensors").values()} == {
        torch.float16
    }  # dtype "keep"
    _assert_state_equal(AutoencoderKLTemporalDecoder.from_pretrained(dst / "vae").state_dict(), vae_src)
    clip = CLIPVisionModelWithProjection.from_pretrained(dst / "image_encoder")
    _assert_state_equal(clip.state_dict(), load_file(svd / "image_encoder" / "model.fp16.safetensors"))
    whisper = WhisperModel.from_pretrained(dst / "audio_encoder")
    whisper_src = {
        k.removeprefix("model."): v
        for k, v in load_file(release_tree / "whisper-tiny" / "model.safetensors").items()
    }
    _assert_state_equal(whisper.state_dict(), whisper_src)
    assert any("'model.'" in note for note in report.components["audio_encoder"].notes)
    assert WhisperFeatureExtractor.from_pretrained(dst / "audio_encoder").feature_size == 80
    scheduler = EulerDiscreteScheduler.from_pretrained(dst / "scheduler")
    assert scheduler.config.prediction_type == "v_prediction" and scheduler.config.use_karras_sigmas


def test_converted_tree_loads_as_a_pipeline(converted) -> None:
    from portrait.weights.load import load_pipeline, verify_manifest

    dst, _ = converted
    assert verify_manifest(dst) == []
    assert load_pipeline(dst, with_audio_encoder=False).unet is not None


def test_same_files_as_a_tree_written_directly(converted, portrait_tree: Path) -> None:
    dst, _ = converted
    assert _rel_files(dst) == _rel_files(portrait_tree)
    manifest = json.loads((dst / MANIFEST_FILE).read_text())
    assert set(manifest["files"]) == _rel_files(dst) - {MANIFEST_FILE}
    assert not [p for p in dst.iterdir() if p.name.startswith(".")]


def test_fp32_conversion_reproduces_the_directly_written_tree(
    release_tree: Path, portrait_tree: Path, tmp_path: Path
) -> None:
    report = convert_dice_talk(release_tree, tmp_path / "w", dtype="fp32")
    assert {r.dtype for r in report.components.values() if r.tensors} == {"float32"}
    for name in sorted(_rel_files(portrait_tree)):
        if name.endswith(".safetensors"):
            _assert_state_equal(load_file(tmp_path / "w" / name), load_file(portrait_tree / name))
    clip_config = json.loads((tmp_path / "w" / "image_encoder" / "config.json").read_text())
    assert clip_config["dtype"] == "float32"  # transformers 5 loads in the recorded dtype


def test_fp16_conversion_casts_every_floating_tensor(release_tree: Path, tmp_path: Path) -> None:
    convert_dice_talk(release_tree, tmp_path / "w", dtype="fp16")
    for comp in ("unet", "vae", "pose_guider", "audio_projector", "emotion_model"):
        tensors = load_file(tmp_path / "w" / comp / "diffusion_pytorch_model.safetensors")
        assert {t.dtype for t in tensors.values() if t.is_floating_point()} == {torch.float16}, comp
    assert load_file(tmp_path / "w" / EMOTIONS_DIR / "sad.safetensors")["mu"].dtype == torch.float32


def test_emotion_priors_round_trip(converted) -> None:
    dst, report = converted
    expected = emotion_priors(seed=0)
    assert sorted(report.emotions) == sorted(RELEASE_EMOTIONS)
    for name in RELEASE_EMOTIONS:
        mu = load_file(dst / EMOTIONS_DIR / f"{name}.safetensors")["mu"]
        assert mu.dtype == torch.float32 and mu.shape == (1, 256)
        assert np.array_equal(mu.numpy(), expected[name])


def test_classifier_keys_are_dropped_and_reported(converted) -> None:
    dst, report = converted
    assert report.components["emotion_model"].dropped == sorted(TINY_CLASSIFIER_SHAPES)
    assert not [
        k
        for k in load_file(dst / "emotion_model" / "diffusion_pytorch_model.safetensors")
        if "classifier" in k
    ]
    assert "dropped 6" in report.summary()


def test_missing_adapter_keys_start_as_copies_of_the_base_to_k_to_v(
    release_copy: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = release_copy / "DICE-Talk" / "unet.pth"
    state = _pth(path)
    dropped = sorted(k for k in state if "_ip." in k)
    torch.save({k: v for k, v in state.items() if k not in dropped}, path)
    with caplog.at_level(logging.WARNING, logger="portrait"):
        report = convert_dice_talk(release_copy, tmp_path / "w")
    assert "lacks 32 adapter keys" in caplog.text
    filled = report.components["unet"].filled
    assert sorted(filled) == dropped
    key = "down_blocks.0.attentions.0.temporal_transformer_blocks.0.attn2.processor.to_v_ip.1.weight"
    assert filled[key].endswith("temporal_transformer_blocks.0.attn2.to_v.weight")
    out = load_file(tmp_path / "w" / "unet" / "diffusion_pytorch_model.safetensors")
    base = load_file(release_copy / SVD / "unet" / "diffusion_pytorch_model.fp16.safetensors")
    to_v = key.replace(".processor.to_v_ip.1", ".to_v")
    assert torch.equal(out[key], base[to_v].float())  # the SVD base weight, not the trained to_v of unet.pth
    assert not torch.equal(out[key], state[to_v])


def test_fp16_unet_pth_without_adapter_keys_keeps_fp16(release_copy: Path, tmp_path: Path) -> None:
    path = release_copy / "DICE-Talk" / "unet.pth"
    torch.save({k: v.half() for k, v in _pth(path).items() if "_ip." not in k}, path)
    report = convert_dice_talk(release_copy, tmp_path / "w")  # both streams copy the same to_k / to_v
    assert report.components["unet"].dtype == "float16" and len(report.components["unet"].filled) == 32
    out = load_file(tmp_path / "w" / "unet" / "diffusion_pytorch_model.safetensors")
    key = "mid_block.attentions.0.transformer_blocks.0.attn2.processor.to_k_ip."
    assert torch.equal(out[key + "0.weight"], out[key + "1.weight"])


def test_module_prefix_is_stripped_and_reported(
    release_tree: Path, release_copy: Path, tmp_path: Path
) -> None:
    for name in ("unet.pth", "pose_guider.pth"):
        path = release_copy / "DICE-Talk" / name
        torch.save({"module." + k: v for k, v in _pth(path).items()}, path)
    report = convert_dice_talk(release_copy, tmp_path / "w")
    for comp in ("unet", "pose_guider"):
        assert any("module." in note for note in report.components[comp].notes), comp
    out = load_file(tmp_path / "w" / "pose_guider" / "diffusion_pytorch_model.safetensors")
    _assert_state_equal(out, _pth(release_tree / "DICE-Talk" / "pose_guider.pth"))
    assert report.components["unet"].filled == {}


def test_plain_svd_file_names_and_fp32_values_under_fp16_names(release_copy: Path, tmp_path: Path) -> None:
    svd = release_copy / SVD
    (svd / "vae" / "diffusion_pytorch_model.fp16.safetensors").rename(
        svd / "vae" / "diffusion_pytorch_model.safetensors"
    )
    clip_file = svd / "image_encoder" / "model.fp16.safetensors"
    save_file({k: v.float() for k, v in load_file(clip_file).items()}, clip_file, metadata={"format": "pt"})
    report = convert_dice_talk(release_copy, tmp_path / "w")
    assert report.components["vae"].sources[-1].endswith("vae/diffusion_pytorch_model.safetensors")
    assert report.components["vae"].dtype == "float16"
    assert report.components["image_encoder"].dtype == "float32"


def test_missing_preprocessor_config_is_created_with_a_warning(
    release_copy: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (release_copy / "whisper-tiny" / "preprocessor_config.json").unlink()
    with caplog.at_level(logging.WARNING, logger="portrait"):
        report = convert_dice_talk(release_copy, tmp_path / "w")
    assert "preprocessor_config.json is missing" in caplog.text
    assert report.components["audio_encoder"].filled
    config = json.loads((tmp_path / "w" / "audio_encoder" / "preprocessor_config.json").read_text())
    assert config["feature_size"] == 80 and config["feature_extractor_type"] == "WhisperFeatureExtractor"


def test_emotions_dir_argument_and_repository_root_are_found(release_tree: Path, tmp_path: Path) -> None:
    repo = tmp_path / "DICE-Talk-repo"
    repo.mkdir()
    (repo / "checkpoints").symlink_to(release_tree, target_is_directory=True)
    report = convert_dice_talk(repo, tmp_path / "w", emotions_dir=release_tree / "examples" / "emo")
    assert report.src == repo / "checkpoints"
    assert len(report.emotions) == 8


# ---- refusals ------------------------------------------------------------------------------------------


def _raises(src: Path, dst: Path, *fragments: str) -> str:
    with pytest.raises(WeightsError) as info:
        convert_dice_talk(src, dst)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message
    assert not dst.exists(), "a failed conversion must leave nothing behind"
    return message


def test_missing_key_in_audio_linear_is_refused(release_copy: Path, tmp_path: Path) -> None:
    path = release_copy / "DICE-Talk" / "audio_linear.pth"
    state = _pth(path)
    del state["proj2.bias"]
    torch.save(state, path)
    _raises(release_copy, tmp_path / "w", "audio_linear.pth", "proj2.bias", "missing")


def test_wrong_shape_in_unet_pth_is_refused(release_copy: Path, tmp_path: Path) -> None:
    path = release_copy / "DICE-Talk" / "unet.pth"
    state = _pth(path)
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_ip.0.weight"
    state[key] = torch.zeros(32, 16)
    torch.save(state, path)
    _raises(release_copy, tmp_path / "w", "unet.pth", key, "(32, 16)", "(32, 32)")


def test_unexpected_key_in_unet_pth_is_refused(release_copy: Path, tmp_path: Path) -> None:
    path = release_copy / "DICE-Talk" / "unet.pth"
    torch.save({**_pth(path), "down_blocks.9.extra.weight": torch.zeros(2)}, path)
    _raises(release_copy, tmp_path / "w", "unet.pth", "down_blocks.9.extra.weight")


def test_prefixed_unet_pth_is_refused_not_silently_ignored(release_copy: Path, tmp_path: Path) -> None:
    path = release_copy / "DICE-Talk" / "unet.pth"
    torch.save({"unet." + k: v for k, v in _pth(path).items()}, path)
    _raises(
        release_copy,
        tmp_path / "w",
        "unet.pth",
        "456 key(s)",
        "unet.conv_in.weight",
        "(+446 more)",
        "'unet.'",
    )


def test_unexpected_and_missing_emo_model_keys_are_refused(release_copy: Path, tmp_path: Path) -> None:
    path = release_copy / "DICE-Talk" / "emo_model.pth"
    original = _pth(path)
    torch.save({**original, "retrieval_head.weight": torch.zeros(1)}, path)
    _raises(release_copy, tmp_path / "w", "emo_model.pth", "retrieval_head.weight")
    torch.save({k: v for k, v in original.items() if k != "attention.fc_v.bias"}, path)
    _raises(release_copy, tmp_path / "w", "emo_model.pth", "attention.fc_v.bias")


class _Payload:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _npy_with_payload(path: Path, payload: bytes) -> None:
    with path.open("wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": ()})
        f.write(payload)


@pytest.mark.parametrize("kind", ["reduce", "opcodes"])
def test_malicious_prior_is_refused_and_not_executed(release_copy: Path, tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "pwned"
    path = release_copy / "examples" / "emo" / "happy.npy"
    if kind == "reduce":  # a real np.save of an object whose pickle calls os.system
        np.save(path, np.array({"mu": _Payload(f"touch {marker}")}, dtype=object))
        refused = "system"
    else:  # hand-written protocol-0 opcodes: builtins.exec(...)
        _npy_with_payload(path, f"cbuiltins\nexec\n(Vopen({str(marker)!r}, 'w')\ntR.".encode())
        refused = "builtins.exec"
    message = _raises(release_copy, tmp_path / "w", "refusing to unpickle", refused, "happy.npy")
    assert "numpy" not in message.split("refusing to unpickle")[1].split(" from ")[0]
    assert not marker.exists()


def test_non_tensor_pth_is_refused(release_copy: Path, tmp_path: Path) -> None:
    path = release_copy / "DICE-Talk" / "pose_guider.pth"
    torch.save({"conv_in.weight": _Payload("true")}, path)  # weights_only=True refuses the pickle
    _raises(release_copy, tmp_path / "w", "pose_guider.pth", "weights_only=True", "it pickles posix.system")
    torch.save({"conv_in.weight": 3}, path)  # loadable, but not a tensor
    _raises(release_copy, tmp_path / "w", "pose_guider.pth", "'conv_in.weight' is a int, not a tensor")


def test_missing_emotion_prior_is_listed(release_copy: Path, tmp_path: Path) -> None:
    (release_copy / "examples" / "emo" / "fear.npy").unlink()
    (release_copy / "examples" / "emo" / "sad.npy").unlink()
    _raises(release_copy, tmp_path / "w", "fear, sad")


def test_non_empty_destination_is_refused_unless_overwrite(release_tree: Path, tmp_path: Path) -> None:
    dst = tmp_path / "w"
    dst.mkdir()
    (dst / "README.md").write_text("weights go here")  # does not count
    convert_dice_talk(release_tree, dst)
    (dst / "unet" / "stale.bin").write_text("old")
    with pytest.raises(WeightsError, match="not empty.*--overwrite"):
        convert_dice_talk(release_tree, dst)
    convert_dice_talk(release_tree, dst, overwrite=True)
    assert not (dst / "unet" / "stale.bin").exists()  # whole component folders are replaced
    assert (dst / "README.md").read_text() == "weights go here"
    assert not [p for p in dst.iterdir() if p.name.startswith(".partial")]
    from portrait.weights.load import verify_manifest

    assert verify_manifest(dst) == []


# ---- the CLI -------------------------------------------------------------------------------------------


@pytest.fixture
def restore_logging():
    logger = logging.getLogger("portrait")
    handlers, level = list(logger.handlers), logger.level
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)


def test_cli_convert_returns_0_then_1_with_one_error_line(
    release_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture, restore_logging
) -> None:
    from portrait.cli.main import main

    dst = tmp_path / "w"
    assert (
        main(["convert", "--from-dice-talk", str(release_tree), "--weights", str(dst), "--dtype", "fp32"])
        == 0
    )
    assert "converted" in capsys.readouterr().out
    assert (
        load_file(dst / "vae" / "diffusion_pytorch_model.safetensors")["encoder.conv_in.weight"].dtype
        == torch.float32
    )
    assert main(["--quiet", "convert", "--from-dice-talk", str(release_tree), "--weights", str(dst)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--overwrite" in err
    assert "Traceback" not in err


def test_cli_usage_errors_exit_2(capsys: pytest.CaptureFixture) -> None:
    from portrait.cli.main import main

    assert main([]) == 2
    assert main(["convert", "--weights", "x"]) == 2  # --from-dice-talk missing
    assert main(["convert", "--from-dice-talk", "a", "--weights", "b", "--dtype", "bf8"]) == 2
    assert "usage" in capsys.readouterr().err


def test_cli_help_does_not_import_torch() -> None:
    code = (
        "import sys\nfrom portrait.cli.main import main\n"
        "codes = [main(['--help']), main(['convert', '--help'])]\n"
        "print(codes, 'torch' in sys.modules, 'numpy' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "[0, 0] False False"
    result = subprocess.run(
        [sys.executable, "-m", "portrait.cli.main", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and "convert" in result.stdout


def test_cli_routes_to_a_default_command_only_when_one_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    import portrait.cli.main as cli

    argv = ["--quiet", "--image", "a", "--audio", "b"]
    assert cli.route(argv) == ["--quiet", "generate", "--image", "a", "--audio", "b"]
    assert cli.route(["--help"]) == ["generate", "--help"]  # the default command's help lists the others
    assert cli.route(["--version"]) == ["--version"]
    assert cli.route(["convert", "--help"]) == ["convert", "--help"]
    monkeypatch.setattr(cli, "DEFAULT_COMMAND", None)
    assert cli.route(argv) == argv


def test_shape_inference_recovers_the_release_sizes_on_meta_tensors() -> None:
    from portrait.models.audio import AudioProjector
    from portrait.models.emotion_model import EmotionModel
    from portrait.models.pose_guider import PoseGuider
    from portrait.models.unet import PortraitUNet
    from portrait.weights import release_config as rel

    with torch.device("meta"):  # full size, no memory
        audio, emotion, guider = AudioProjector(), EmotionModel(), PoseGuider()
        unet = PortraitUNet.from_config(rel.unet_config({"_class_name": "UNetSpatioTemporalConditionModel"}))
    whisper_tiny = {"d_model": 384, "encoder_layers": 4}

    def args(model) -> dict:
        return {k: v for k, v in model.config.items() if not k.startswith("_")}

    file = Path("x.pth")
    assert rel.audio_projector_config(audio.state_dict(), file, whisper_tiny) == args(audio)
    assert {**rel.emotion_model_config(emotion.state_dict(), file), "retrieval": False} == args(emotion)
    inferred = rel.pose_guider_config(guider.state_dict(), file)
    assert inferred == {**args(guider), "block_out_channels": [16, 32, 96, 256]}
    assert len(unet.state_dict()) == 1556  # compat §4.7: 1428 base + 128 adapter tensors


def test_the_release_classifier_is_kept_as_an_optional_component(converted) -> None:
    from portrait.layout import OPTIONAL_COMPONENTS
    from portrait.models.emotion_classifier import EmotionClassifier
    from portrait.testing.components import classifier_tensors
    from portrait.testing.configs import tiny_configs
    from portrait.weights.load import load_component

    dst, report = converted
    assert "emotion_classifier" in {c.name for c in OPTIONAL_COMPONENTS}
    assert report.components["emotion_classifier"].tensors == len(TINY_CLASSIFIER_SHAPES)
    model = load_component("emotion_classifier", dst)  # strict: every key and shape checked
    assert isinstance(model, EmotionClassifier)
    config = model.config
    assert (config.in_channels, tuple(config.hidden_dims), config.num_classes) == (40, (8, 6), 22)
    tensors = classifier_tensors(tiny_configs().emotion_classifier, seed=0)
    source = {k.removeprefix("classifier."): v for k, v in tensors.items()}
    _assert_state_equal(model.state_dict(), source)
    features = torch.randn(3, 40, 4, 4)
    pooled = features.mean((2, 3))
    first = torch.relu(pooled @ source["fc1.weight"].T + source["fc1.bias"])
    hidden = torch.relu(first @ source["fc2.weight"].T + source["fc2.bias"])
    expected = hidden @ source["fc3.weight"].T + source["fc3.bias"]
    assert torch.allclose(model.float()(features), expected, atol=1e-4)
    assert torch.equal(model.float()(features), model.float()(pooled))
    with pytest.raises(ValueError, match=r"features must be \(B, 40"):
        model(torch.randn(2, 39))


def test_a_cast_conversion_frees_each_source_tensor_as_it_goes(tmp_path: Path) -> None:
    """``save_tensors`` replaces each entry by its cast copy: the float32 sources are freed one by one, so
    converting a float32 unet.pth to float16 holds the file's tensors and one copy, not both whole (that
    peaked at 1.53× the 6.5 GB checkpoint at the true size)."""
    import weakref

    from portrait.weights.convert_components import ComponentReport, save_tensors

    tensors = {f"w{i}": torch.randn(64, 64) for i in range(4)}
    sources = [weakref.ref(t) for t in tensors.values()]
    first = tensors["w0"].clone()
    save_tensors(tmp_path / "out", "pose_guider", tensors, ComponentReport("pose_guider"), "fp16")
    assert all(ref() is None for ref in sources)  # no source survives its cast
    written = load_file(tmp_path / "out" / "diffusion_pytorch_model.safetensors")
    assert written["w0"].dtype == torch.float16 and torch.equal(written["w0"], first.half())
