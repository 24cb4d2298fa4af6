"""Training learns: the loss shares the sampler's conventions, and the synthetic learning check passes.

The check itself (``portrait.training.learning_check``, ``scripts/learning_check.py``) runs here in its
quick preset; the full preset is ``@pytest.mark.slow`` (``PORTRAIT_SLOW_TESTS=1``).
"""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch

from portrait.training.landmark_guider import edm_preconditioning
from portrait.training.learning_check.check import CheckSettings, preset, sabotaged, verdict
from portrait.training.learning_check.render import best_lag, correlations, pooled


def test_loss_preconditioning_is_the_samplers():
    """c_in, D(x, v) and the UNet's time in the loss are exactly what the sampler uses at every σ."""
    from diffusers import EulerDiscreteScheduler

    from portrait import sampling
    from portrait.testing.configs import svd_xt_scheduler_config

    scheduler = EulerDiscreteScheduler.from_config(svd_xt_scheduler_config())
    scheduler.set_timesteps(25)
    gen = torch.Generator().manual_seed(0)
    for t, sigma in zip(scheduler.timesteps, scheduler.sigmas[:-1], strict=True):
        x, v = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
        c_in, c_skip, c_out, c_noise = edm_preconditioning(sigma)
        assert torch.allclose(c_noise, t.float(), rtol=1e-6, atol=1e-6)  # ¼·ln σ, the scheduler's time
        assert torch.allclose(c_in * x, sampling.scale_model_input(x, sigma), rtol=1e-6, atol=1e-7)
        x0 = sampling.euler_step(x, v, sigma, torch.tensor(0.0))  # a step to σ = 0 lands on D(x, v)
        assert torch.allclose(c_skip * x + c_out * v, x0, rtol=1e-5, atol=1e-5)


def test_cached_expressions_are_what_a_render_feeds_the_embedder(tiny_weights, tmp_path):
    """``prepare`` caches the expression classifier's probabilities of the crops a render's ``--emotion-from``
    classifies (the detector's face box with its margin), not of another crop: the learning check found the
    landmark-box crops it used before read the same clips differently (held-out top-1 100 % from the cache,
    69 % through the render path)."""
    from transformers import WhisperFeatureExtractor

    from portrait.preprocess.face_expressions import classify_media
    from portrait.testing.synthetic.dataset import write_dataset
    from portrait.testing.synthetic.face import SyntheticFaceDetector, SyntheticLandmarker
    from portrait.training.data import find_sources
    from portrait.training.prepare import Extractors, PrepareSettings, extract_video
    from portrait.weights.expression_classifier import load_expression_classifier
    from portrait.weights.load import load_pipeline

    labels = write_dataset(tmp_path / "data", speakers=1, clips_per_emotion=1, frames=10, emotions=("angry",))
    (source,) = find_sources(labels)
    classifier, detector = load_expression_classifier(), SyntheticFaceDetector()
    extractors = Extractors(
        load_pipeline(tiny_weights), WhisperFeatureExtractor.from_pretrained(tiny_weights / "audio_encoder"),
        detector, SyntheticLandmarker(), classifier,
    )  # fmt: skip
    cached = extract_video(source, extractors, PrepareSettings(size=64, store_dtype="fp32"))["expression"]
    read = classify_media(source.path, classifier, detector, fps=12.5, keep_frames=True)["frames"]["probs"]
    assert cached.shape == (10, 7)
    assert torch.equal(cached, torch.as_tensor(read[:10], dtype=torch.float32))


def test_correlations_and_lag():
    t = np.arange(40)
    path = np.stack([np.sin(t / 3), np.cos(t / 5)], 1)
    assert correlations(path * 3 + 1, path) == {"x": 1.0, "y": 1.0}
    still = np.ones_like(path)
    assert correlations(still, path) == {"x": 0.0, "y": 0.0}  # a face that stays put does not follow
    late = np.concatenate([path[:2], path[:-2]])  # the render two frames behind the path
    assert best_lag([(late, path)]) == 2 and best_lag([(path, path)]) == 0
    early = np.concatenate([path[1:], path[-1:]])  # one frame ahead
    assert best_lag([(early, path), (path, path), (early, path)]) == -1


def test_verdict_needs_every_mark():
    s = CheckSettings()
    good = {"with_guider": {"x": 0.95, "y": 0.92}, "without_guider": {"x": 0.1, "y": -0.4}, "best_lag": 0}
    learned = {"trained_top1": 1.0, "trained_top1_render_path": 0.95}
    assert verdict(good, learned, s)["passed"]
    assert not verdict(good, {**learned, "trained_top1_render_path": 0.5}, s)["embedder_learns"]
    assert not verdict({**good, "with_guider": {"x": 0.95, "y": 0.85}}, learned, s)["guider_follows"]
    assert not verdict({**good, "best_lag": -1}, learned, s)["guider_on_time"]
    assert not verdict({**good, "without_guider": {"x": 0.5, "y": 0.1}}, learned, s)["still_without_guider"]
    with pytest.raises(ValueError, match="preset"):
        preset("huge")


def test_check_refuses_a_used_folder_and_an_unknown_sabotage(tmp_path):
    from portrait.training.learning_check.check import run_check

    with pytest.raises(ValueError, match="sabotage"):
        run_check(tmp_path / "new", preset("quick", sabotage="gamma"))
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        run_check(tmp_path / "used", preset("quick"))
    assert not (tmp_path / "new").exists()  # nothing was written before the refusal


def test_pooled_measures_centre_each_render():
    t = np.arange(30.0)
    path = np.stack([np.sin(t / 3), np.cos(t / 4)], 1)
    renders = [
        {"trajectories": {"driving": path + k, "with_guider": 2 * path + 5 * k, "without_guider": -path}}
        for k in range(3)
    ]
    result = pooled(renders)
    assert result["with_guider"] == {"x": 1.0, "y": 1.0} and result["best_lag"] == 0  # offsets do not count
    assert result["without_guider"] == {"x": -1.0, "y": -1.0}


def test_sabotage_breaks_one_convention_and_restores_it():
    from portrait.pipeline import PortraitPipeline
    from portrait.training import landmark_guider

    sigma = torch.tensor(2.0)
    right = landmark_guider.edm_preconditioning(sigma)
    with sabotaged("sigma"):  # the UNet input left unscaled, the rest as the sampler
        wrong = landmark_guider.edm_preconditioning(sigma)
        assert float(wrong[0]) == 1.0 and torch.equal(torch.stack(wrong[1:]), torch.stack(right[1:]))
    with sabotaged("time"):  # ln σ as the time, the rest as the sampler
        wrong = landmark_guider.edm_preconditioning(sigma)
        assert torch.allclose(wrong[3], torch.log(sigma)) and torch.equal(
            torch.stack(wrong[:3]), torch.stack(right[:3])
        )
    assert landmark_guider.edm_preconditioning is edm_preconditioning

    encode = PortraitPipeline.encode_motion
    maps = torch.arange(5.0)[:, None, None, None].expand(5, 3, 2, 2)
    with mock.patch.object(PortraitPipeline, "encode_motion", lambda self, m, *a, **k: m):
        with sabotaged("shift"):
            seen = PortraitPipeline.encode_motion(None, maps, 12)
        assert PortraitPipeline.encode_motion(None, maps, 12) is maps
    assert seen[:, 0, 0, 0].tolist() == [1, 2, 3, 4, 4]  # every frame gets the next frame's map
    assert PortraitPipeline.encode_motion is encode
    with pytest.raises(ValueError, match="sabotage"), sabotaged("gamma"):
        pass


def test_rescaled_vae_reconstructs_the_same_with_unit_variance_latents():
    from diffusers import AutoencoderKLTemporalDecoder

    from portrait.models.identity import LATENT_SCALE
    from portrait.testing.configs import tiny_vae_config
    from portrait.training.learning_check.base import rescale_latents

    torch.manual_seed(0)
    vae = AutoencoderKLTemporalDecoder(**tiny_vae_config()).eval()
    clips = torch.rand(2, 8, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        before = vae.decode(vae.encode(clips[0]).latent_dist.mode(), num_frames=8).sample
        k = rescale_latents(vae, clips)
        means = vae.encode(clips[:, ::2].flatten(0, 1)).latent_dist.mean
        after = vae.decode(vae.encode(clips[0]).latent_dist.mode(), num_frames=8).sample
    assert k > 0 and abs(float(means.std()) * LATENT_SCALE - 1) < 1e-3
    assert torch.allclose(before, after, atol=1e-4)


# ------------------------------------------------------------------------------------------- the check
def _report_line(report: dict) -> str:
    return f"checks {report['checks']}, motion {report['motion']}, embedder {report['embedder']}"


def test_learning_check_quick(tmp_path):
    """The CI variant of ``scripts/learning_check.py``: fewer clips and steps, the same stages and marks
    (a lower bar for following the path); it fails when the σ convention or the map alignment breaks
    (``test_learning_check_fails_when_broken``)."""
    from portrait.training.learning_check.check import run_check

    report = run_check(tmp_path / "work", preset("quick"))
    assert report["skipped"] == 0 and report["clips"] == 16
    for run, losses in report["losses"].items():
        assert losses["last_fixed_loss"] < losses["first_fixed_loss"], run
    assert report["embedder"]["untrained_top1"] < report["embedder"]["trained_top1"]
    assert report["checks"]["passed"], _report_line(report)


@pytest.mark.slow
def test_learning_check_full(tmp_path):
    """``python scripts/learning_check.py``: the issue's marks (x and y correlation ≥ 0.9 with the guider,
    ≤ 0.3 without, held-out top-1 ≥ 90 %)."""
    from portrait.training.learning_check.check import run_check

    report = run_check(tmp_path / "work", preset("full"))
    assert report["checks"]["passed"], _report_line(report)


@pytest.mark.slow
@pytest.mark.parametrize("sabotage", ["sigma", "time", "shift"])
def test_learning_check_fails_when_broken(tmp_path, sabotage):
    """The quick check with one convention broken on purpose fails, on the mark that convention feeds."""
    from portrait.training.learning_check.check import run_check

    report = run_check(tmp_path / "work", preset("quick", sabotage=sabotage))
    assert not report["checks"]["passed"], _report_line(report)
    failed = {"sigma": "guider_follows", "time": "guider_follows", "shift": "guider_on_time"}[sabotage]
    assert not report["checks"][failed], _report_line(report)
