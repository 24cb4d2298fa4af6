"""`PortraitPipeline`: tensors in, talking-portrait frames out (compat §6).

The pipeline does no file I/O: preprocessing (image, face mask, audio features, emotion priors) happens
before it and video writing after it. Its ``__call__`` is written as the reference's numbered steps; every
quirk that matters for parity is kept (docs/compatibility.md).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from diffusers import AutoencoderKLTemporalDecoder, DiffusionPipeline, EulerDiscreteScheduler
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from portrait import sampling
from portrait.errors import InputError
from portrait.models.audio import AudioProjector
from portrait.models.emotion_model import EmotionModel
from portrait.models.identity import (
    LATENT_SCALE,
    IdentityEncoding,
    encode_clip_image,
    encode_reference_latents,
)
from portrait.models.landmark_guider import LandmarkGuider
from portrait.models.pose_guider import PoseGuider
from portrait.models.unet import PortraitUNet

if TYPE_CHECKING:  # transformers is imported by the components' loader, not needed to define the class
    from transformers import CLIPVisionModelWithProjection, WhisperModel

logger = logging.getLogger(__name__)

#: ``callback(step_index, num_steps, latents)`` called after every denoising step.
StepCallback = Callable[[int, int, torch.Tensor], None]
#: ``denoise(group)`` steps the k windows of ``group`` (k, F) by one step: k latents (1, F, C, h, w).
Denoise = Callable[[torch.Tensor], list[torch.Tensor]]


class WindowExecutor(Protocol):
    """Who steps one denoising step's windows: this process (:func:`step_every_window`, the default) or
    several ranks (``portrait.distributed.group.RankWindowExecutor``)."""

    def __call__(
        self, windows: torch.Tensor, window_batch: int, denoise: Denoise, latents: torch.Tensor
    ) -> list[torch.Tensor]:
        """Args: windows (W, F) frame indices of the step's windows; window_batch: windows per UNet call;
        latents (1, L, C, h, w) the step's input. Returns the W stepped windows (1, F, C, h, w) in window
        order."""
        ...


def step_every_window(
    windows: torch.Tensor, window_batch: int, denoise: Denoise, latents: torch.Tensor
) -> list[torch.Tensor]:
    """The default :class:`WindowExecutor`: this process steps every window, ``window_batch`` per call."""
    return [x for group in windows.split(window_batch) for x in denoise(group)]


@dataclass
class PortraitPipelineOutput(BaseOutput):
    """Output of :class:`PortraitPipeline`.

    Attributes:
        frames: (N, 3, H, W) float32 frames in [0, 1] on the CPU (``output_type="pt"``), or ``None``.
        latents: (1, N + F, 4, h, w) final latents including the padding frames (``output_type="latent"``).
    """

    frames: torch.Tensor | None
    latents: torch.Tensor | None = None


@dataclass(frozen=True)
class _Conditioning:
    """Per-job conditioning tensors, built once (not per frame or per window)."""

    image_context: torch.Tensor  # (3·F, 1, D) CLIP tokens of the window batch [zeros | image | image]
    cond_latents: torch.Tensor  # (3, F, 4, h, w) conditioning latents [zeros | image | image]
    audio: torch.Tensor  # (L, T, D) per-frame audio tokens, unconditional on the padding frames
    audio_uncond: torch.Tensor  # (T, D)
    emotion: torch.Tensor  # (L, T, D)
    emotion_uncond: torch.Tensor  # (T, D)
    pose: torch.Tensor  # (1, 1, C0, h, w) pose-guider features, identical for every frame
    face_mask: torch.Tensor  # (1, 1, H, W) IP-adapter mask (channel 0 of the face mask)
    added_time_ids: torch.Tensor  # (3, 3)
    #: (L, C0, h, w) landmark-guider features per frame of the cyclic axis (the padding frames hold the
    #: last map's), added to ``pose`` per window; ``None`` without motion maps (today's path, unchanged).
    motion: torch.Tensor | None = None
    #: (L,) float64 CPU motion bucket per frame of the cyclic axis (the padding frames hold the last
    #: value); each window's added time ids use its frames' mean, rounded. ``None``: ``added_time_ids``.
    motion_buckets: torch.Tensor | None = None


class PortraitPipeline(DiffusionPipeline):
    """DICE-Talk-compatible sampler over an SVD UNet with audio, emotion and pose conditions.

    Components: ``unet`` (:class:`~portrait.models.unet.PortraitUNet`), ``vae``
    (``AutoencoderKLTemporalDecoder``), ``image_encoder`` (``CLIPVisionModelWithProjection``), ``scheduler``
    (``EulerDiscreteScheduler``, used for its σ table), ``pose_guider``, ``audio_projector``,
    ``emotion_model``, and optionally ``audio_encoder`` (``WhisperModel``; only for :meth:`encode_audio`).
    The UNet, VAE, image encoder and pose guider run in the pipeline dtype; the audio projector and the
    emotion model run in their own dtype (fp32 in the reference).
    """

    model_cpu_offload_seq = "image_encoder->vae->pose_guider->unet->vae"
    _optional_components = ["audio_encoder", "landmark_guider"]

    def __init__(
        self,
        unet: PortraitUNet,
        vae: AutoencoderKLTemporalDecoder,
        image_encoder: CLIPVisionModelWithProjection,
        scheduler: EulerDiscreteScheduler,
        pose_guider: PoseGuider,
        audio_projector: AudioProjector,
        emotion_model: EmotionModel,
        audio_encoder: WhisperModel | None = None,
        landmark_guider: LandmarkGuider | None = None,
    ):
        super().__init__()
        self.register_modules(
            unet=unet,
            vae=vae,
            image_encoder=image_encoder,
            scheduler=scheduler,
            pose_guider=pose_guider,
            audio_projector=audio_projector,
            emotion_model=emotion_model,
            audio_encoder=audio_encoder,
            landmark_guider=landmark_guider,
        )

    # ------------------------------------------------------------------ inputs
    def check_inputs(
        self,
        ref_image: torch.Tensor,
        clip_image: torch.Tensor,
        face_mask: torch.Tensor,
        audio_windows: torch.Tensor,
        emotion_priors: torch.Tensor,
        *,
        steps: int,
        frames_per_window: int,
        overlap: int,
        decode_chunk_size: int,
        window_batch: int,
        output_type: str,
        latents: torch.Tensor | None = None,
        motion_maps: torch.Tensor | None = None,
        motion_bucket_ids: torch.Tensor | None = None,
    ) -> None:
        """Raise :class:`InputError` naming the first ``__call__`` argument whose shape or value is wrong."""
        height, width = self._check_image_inputs(ref_image, clip_image, face_mask)
        num_frames = self._check_conditions(audio_windows, emotion_priors)
        if steps < 1:
            raise InputError(f"steps must be >= 1, got {steps}")
        if frames_per_window < 1 or not 0 <= overlap < frames_per_window:
            raise InputError(
                "need frames_per_window >= 1 and 0 <= overlap < frames_per_window, "
                f"got {frames_per_window}, {overlap}"
            )
        if decode_chunk_size < 1:
            raise InputError(f"decode_chunk_size must be >= 1, got {decode_chunk_size}")
        if window_batch < 1:
            raise InputError(f"window_batch must be >= 1, got {window_batch}")
        if output_type not in ("pt", "latent"):
            raise InputError(f"output_type must be 'pt' or 'latent', got {output_type!r}")
        if latents is not None:
            shape = self.latent_shape(num_frames + frames_per_window, height, width)
            if tuple(latents.shape) != shape:
                raise InputError(f"latents must be {shape}, got {tuple(latents.shape)}")
        if motion_maps is not None:
            _check_motion_maps(motion_maps, num_frames, (height, width))
        if motion_bucket_ids is not None:
            _check_motion_buckets(motion_bucket_ids, num_frames)

    def _check_image_inputs(
        self, ref_image: torch.Tensor, clip_image: torch.Tensor, face_mask: torch.Tensor
    ) -> tuple[int, int]:
        """The portrait tensors' shapes; returns (H, W)."""
        if ref_image.ndim != 4 or ref_image.shape[:2] != (1, 3):
            raise InputError(f"ref_image must be (1, 3, H, W), got {tuple(ref_image.shape)}")
        height, width = ref_image.shape[-2:]
        if height % 64 or width % 64:
            raise InputError(
                f"image size must be a multiple of 64 (reference resize rule), got {width}x{height}"
            )
        if clip_image.ndim != 4 or clip_image.shape[:2] != (1, 3):
            raise InputError(f"clip_image must be (1, 3, S, S), got {tuple(clip_image.shape)}")
        if face_mask.ndim != 4 or face_mask.shape[0] != 1 or face_mask.shape[-2:] != (height, width):
            raise InputError(f"face_mask must be (1, C, {height}, {width}), got {tuple(face_mask.shape)}")
        return height, width

    def _check_conditions(self, audio_windows: torch.Tensor, emotion_priors: torch.Tensor) -> int:
        """The audio windows' and emotion priors' shapes; returns the frame count N."""
        expected = self._audio_window_shape()
        if audio_windows.ndim != 4 or tuple(audio_windows.shape[1:]) != expected:
            raise InputError(
                f"audio_windows must be (N, {', '.join(map(str, expected))}), "
                f"got {tuple(audio_windows.shape)}"
            )
        if audio_windows.shape[0] < 1:
            raise InputError("audio is shorter than one video frame (80 ms): nothing to generate")
        num_frames = audio_windows.shape[0]
        prior_dim = self.emotion_model.config.prior_dim
        if (
            emotion_priors.ndim != 2
            or emotion_priors.shape[1] != prior_dim
            or emotion_priors.shape[0] not in (1, num_frames)
        ):
            raise InputError(
                f"emotion_priors must be (1 or {num_frames}, {prior_dim}), got {tuple(emotion_priors.shape)}"
            )
        return num_frames

    def _audio_window_shape(self) -> tuple[int, int, int]:
        cfg = self.audio_projector.config
        return (cfg.seq_len, cfg.blocks, cfg.channels)

    def latent_shape(self, length: int, height: int, width: int) -> tuple[int, ...]:
        """Shape (1, L, C, h, w) of the initial noise for ``length`` frames of ``height``×``width``."""
        factor = self.vae_scale_factor
        return (1, length, self.vae.config.latent_channels, height // factor, width // factor)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    # ------------------------------------------------------------ conditioning
    @torch.inference_mode()
    def encode_identity(
        self,
        ref_image: torch.Tensor,
        clip_image: torch.Tensor,
        noise: torch.Tensor,
        noise_aug_strength: float = 0.0,
    ) -> IdentityEncoding:
        """CLIP embedding and VAE latents of the portrait (VAE upcast to fp32 as in the reference)."""
        device, dtype = self._execution_device, self.unet.dtype
        image_embeds = encode_clip_image(self.image_encoder, clip_image.to(device))
        upcast = self.vae.dtype == torch.float16 and self.vae.config.force_upcast
        if upcast:
            self.vae.to(dtype=torch.float32)
        try:
            ref_latent, cond_latent = encode_reference_latents(
                self.vae, ref_image.to(device, torch.float32), noise, noise_aug_strength
            )
        finally:
            if upcast:
                self.vae.to(dtype=torch.float16)
        return IdentityEncoding(image_embeds, ref_latent, cond_latent).to(device, dtype)

    @torch.inference_mode()
    def encode_audio_tokens(
        self, audio_windows: torch.Tensor, chunk: int = 256
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Audio tokens per frame (N, T, D) and the unconditional tokens (T, D) = projector(zeros)."""
        param = next(self.audio_projector.parameters())
        tokens = [
            self.audio_projector(part.to(param.device, param.dtype)) for part in audio_windows.split(chunk)
        ]
        uncond = self.audio_projector(
            torch.zeros_like(audio_windows[:1], device=param.device, dtype=param.dtype)
        )
        return torch.cat(tokens), uncond[0]

    @torch.inference_mode()
    def encode_emotion_tokens(
        self, priors: torch.Tensor, retrieval: bool | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Emotion tokens per row of ``priors`` (R, T, D) and the unconditional tokens (T, D).

        Each distinct prior is encoded once (a clip with one emotion costs one call, not one per frame).
        """
        param = next(self.emotion_model.parameters())
        priors = priors.to(param.device, param.dtype)
        unique, inverse = torch.unique(priors, dim=0, return_inverse=True)
        encoded = torch.cat([self.emotion_model(row[None], retrieval=retrieval) for row in unique])
        uncond = self.emotion_model(torch.zeros_like(priors[:1]), retrieval=retrieval)
        return encoded[inverse], uncond[0]

    def _conditioning(
        self,
        identity: IdentityEncoding,
        face_mask: torch.Tensor,
        audio_windows: torch.Tensor,
        emotion_priors: torch.Tensor,
        frames_per_window: int,
        added_time_ids: tuple[float, float, float],
        retrieval: bool | None,
        motion_maps: torch.Tensor | None = None,
        motion_bucket_ids: torch.Tensor | None = None,
    ) -> _Conditioning:
        """Steps 2–4 of the reference: per-job conditioning tables with the padding frames appended."""
        device, dtype = self._execution_device, self.unet.dtype
        window = frames_per_window
        num_frames = audio_windows.shape[0]

        zeros_embed = torch.zeros_like(identity.image_embeds)
        image_tokens = torch.stack([zeros_embed, identity.image_embeds, identity.image_embeds])  # (3, 1, D)
        image_context = (
            image_tokens[:, None].expand(3, window, 1, image_tokens.shape[-1]).reshape(3 * window, 1, -1)
        )
        cond = identity.cond_latent
        cond_latents = torch.stack([torch.zeros_like(cond), cond, cond]).expand(3, window, *cond.shape[1:])

        audio, audio_uncond = self.encode_audio_tokens(audio_windows)
        emotion, emotion_uncond = self.encode_emotion_tokens(emotion_priors, retrieval)
        emotion = emotion.expand(num_frames, *emotion.shape[1:])

        def padded(tokens: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
            pad = uncond[None].expand(window, *uncond.shape)
            return torch.cat([tokens, pad]).to(device, dtype)

        mask = face_mask.to(device, dtype)
        channels = self.pose_guider.config.conditioning_channels
        pose_input = mask[:, :1].expand(1, channels, *mask.shape[-2:]) if mask.shape[1] != channels else mask
        pose = self.pose_guider(pose_input)[:, None]  # once: every frame's mask is the same (compat §5)
        time_ids = torch.tensor([added_time_ids], dtype=dtype, device=device).repeat(3, 1)
        return _Conditioning(
            image_context=image_context,
            cond_latents=cond_latents,
            audio=padded(audio, audio_uncond),
            audio_uncond=audio_uncond.to(device, dtype),
            emotion=padded(emotion, emotion_uncond),
            emotion_uncond=emotion_uncond.to(device, dtype),
            pose=pose,
            face_mask=mask[:, :1],
            added_time_ids=time_ids,
            motion=None if motion_maps is None else self.encode_motion(motion_maps, window),
            motion_buckets=None if motion_bucket_ids is None else _padded_buckets(motion_bucket_ids, window),
        )

    @torch.inference_mode()
    def encode_motion(
        self, motion_maps: torch.Tensor, frames_per_window: int, chunk: int = 32
    ) -> torch.Tensor | None:
        """Landmark-guider features of every frame of the cyclic axis, once per job.

        Args:
            motion_maps: (N, 3, H, W) motion maps in [0, 1], one per real frame.
            frames_per_window: F; the F padding frames hold the last map (the head stays where it ended,
                as the padding frames continue the last real frame in the cyclic order).
            chunk: frames per guider call.

        Returns:
            (N + F, C0, H / 8, W / 8) features in the pipeline dtype, or ``None`` (with a warning) when
            the pipeline has no landmark guider. Memory: N + F frames of C0·h·w values on the device.
        """
        guider = getattr(self, "landmark_guider", None)
        if guider is None:
            logger.warning(
                "motion maps given but the weights have no landmark_guider: head motion is not "
                "followed (see docs/motion.md)"
            )
            return None
        device, dtype = self._execution_device, self.unet.dtype
        param = next(guider.parameters())
        hold = motion_maps[-1:].expand(frames_per_window, *motion_maps.shape[1:])
        maps = torch.cat([motion_maps, hold])
        features = [guider(part.to(param.device, param.dtype)) for part in maps.split(chunk)]
        return torch.cat(features).to(device, dtype)

    # ------------------------------------------------------------------ sampling
    def _denoise_windows(
        self,
        latents: torch.Tensor,
        group: torch.Tensor,
        cond: _Conditioning,
        t: torch.Tensor,
        sigma: torch.Tensor,
        sigma_next: torch.Tensor,
        scale_ref: torch.Tensor,
        scale_emo: torch.Tensor,
        fast_attention: bool,
    ) -> list[torch.Tensor]:
        """One UNet call on k windows (compat §6.10 c–g); returns k stepped latents (1, F, 4, h, w).

        The batch is window-major: [uncond, drop, cond] of window 1, then of window 2, ... With k = 1 this
        is exactly the reference's call; k > 1 batches the independent windows of a step (same maths).
        """
        k, window = group.shape
        xs = [sampling.gather_frames(latents, idx) for idx in group]
        pose = cond.pose  # (1, 1, C0, h, w): the same on every frame and branch
        if cond.motion is not None:  # + per-frame guider features of each window, for all 3 branches
            motion = torch.stack([sampling.gather_frames(cond.motion[None], idx)[0] for idx in group])
            pose = (pose + motion).repeat_interleave(3, dim=0)  # (3k, F, C0, h, w)
        model_input = torch.cat([sampling.scale_model_input(torch.cat([x, x, x]), sigma) for x in xs])
        model_input = torch.cat([model_input, cond.cond_latents.repeat(k, 1, 1, 1, 1)], dim=2)

        def branches(table: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
            u = uncond[None].expand(window, *uncond.shape)
            return torch.cat(
                [torch.cat([u, u, sampling.gather_frames(table[None], idx)[0]]) for idx in group]
            )

        v = self.unet(
            model_input,
            t,
            encoder_hidden_states=cond.image_context.repeat(k, 1, 1),
            added_time_ids=_window_time_ids(cond, group),
            adapter_tokens=(
                branches(cond.audio, cond.audio_uncond),
                branches(cond.emotion, cond.emotion_uncond),
            ),
            face_mask=cond.face_mask,
            pose_features=pose,
            compact_temporal_context=fast_attention,
        ).sample
        stepped = []
        for j, x in enumerate(xs):
            guided = sampling.combine_guidance(v[3 * j : 3 * j + 3], scale_ref, scale_emo)
            stepped.append(sampling.euler_step(x, guided, sigma, sigma_next))
        return stepped

    # ------------------------------------------------------------------ decoding
    @torch.inference_mode()
    def decode_frames(
        self, latents: torch.Tensor, num_frames: int, chunk_size: int = 10
    ) -> Iterator[torch.Tensor]:
        """Decode ``latents`` (1, L, 4, h, w) chunk by chunk over all L frames (compat §6.12).

        Yields (n, 3, H, W) float32 CPU frames in [0, 1], only the first ``num_frames`` in total: the padding
        frames are decoded (they change the temporal decoder's result for the last real frames) and dropped.
        """
        z = latents[0] * (1 / LATENT_SCALE)
        emitted = 0
        for start in range(0, z.shape[0], chunk_size):
            if emitted >= num_frames:
                break
            part = z[start : start + chunk_size]
            frames = self.vae.decode(part.to(self.vae.dtype), num_frames=part.shape[0]).sample
            frames = frames.float()[: num_frames - emitted]
            emitted += frames.shape[0]
            yield (frames * 0.5 + 0.5).clamp(0, 1).cpu()

    # ------------------------------------------------------------------ call
    @torch.inference_mode()
    def __call__(
        self,
        ref_image: torch.Tensor,
        clip_image: torch.Tensor,
        face_mask: torch.Tensor,
        audio_windows: torch.Tensor,
        emotion_priors: torch.Tensor,
        *,
        steps: int = 25,
        frames_per_window: int = 25,
        overlap: int = 0,
        shift_offset: int = 7,
        ref_scale_min: float = 3.0,
        ref_scale_max: float = 3.0,
        emo_scale_min: float = 6.0,
        emo_scale_max: float = 6.0,
        i2i_noise_strength: float = 1.0,
        noise_aug_strength: float = 0.0,
        fps: float = 12.5,
        motion_bucket_id: int = 8,
        motion_bucket_id_exp: int = 16,
        decode_chunk_size: int = 10,
        ip_audio_scale: float = 1.0,
        ip_emo_scale: float = 1.0,
        retrieval: bool | None = None,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        identity: IdentityEncoding | None = None,
        output_type: str = "pt",
        callback: StepCallback | None = None,
        window_batch: int = 1,
        fast_attention: bool = False,
        window_executor: WindowExecutor = step_every_window,
        motion_maps: torch.Tensor | None = None,
        motion_bucket_ids: torch.Tensor | None = None,
    ) -> PortraitPipelineOutput:
        """Generate N frames of the portrait speaking the audio.

        The keyword arguments carry the names of ``portrait.config.SamplingConfig`` (``steps``,
        ``ref_scale_min``, ...), so a config becomes a call in one mapping.

        Args:
            ref_image: (1, 3, H, W) portrait in [-1, 1], H and W multiples of 64.
            clip_image: (1, 3, 224, 224) CLIP-normalised portrait.
            face_mask: (1, 3, H, W) (or (1, 1, H, W)) face-region mask in [0, 1].
            audio_windows: (N, seq_len, blocks, channels) Whisper hidden-state window per frame.
            emotion_priors: (N, D) per-frame emotion prior, or (1, D) for the whole clip.
            ip_audio_scale, ip_emo_scale: adapter scales of the audio and emotion streams for this call
                (0 disables a stream); the UNet's own scales are restored afterwards.
            generator: RNG for the two noise draws (``None``: the global RNG, as the reference).
            latents: (1, N + F, 4, h, w) initial noise replacing RNG draw #2 (draw #1 still happens).
            identity: precomputed :meth:`encode_identity` result (RNG draw #1 still happens).
            output_type: ``"pt"`` (decoded frames) or ``"latent"``.
            callback: called after each denoising step with (step, num_steps, latents).
            window_batch: windows per UNet call (1 = the reference's call shapes; more = fewer, larger
                calls, same maths, not bit-identical).
            fast_attention: compact temporal cross-attention context (see ``PortraitUNet.forward``).
            window_executor: who steps each step's windows: this process (the default) or several ranks
                (``portrait.distributed.group.RankWindowExecutor``); same maths either way.
            motion_maps: (N, 3, H, W) per-frame motion maps in [0, 1] (``portrait.motion``) for the
                landmark guider, whose features are added to the pose features frame by frame; ``None``
                (or a pipeline without ``landmark_guider``: a warning) leaves the call unchanged.
            motion_bucket_ids: (N,) per-frame SVD motion bucket (experimental, ``portrait.motion.bucket``):
                each window's added time ids take the mean over its frames, rounded to an integer (the
                padding frames hold the last value); replaces ``motion_bucket_id``. ``None``: unchanged.
        """
        # 1. Check inputs.
        self.check_inputs(
            ref_image, clip_image, face_mask, audio_windows, emotion_priors, steps=steps,
            frames_per_window=frames_per_window, overlap=overlap, decode_chunk_size=decode_chunk_size,
            window_batch=window_batch, output_type=output_type, latents=latents, motion_maps=motion_maps,
            motion_bucket_ids=motion_bucket_ids,
        )  # fmt: skip
        device, dtype = self._execution_device, self.unet.dtype
        num_frames = audio_windows.shape[0]
        length = sampling.padded_length(num_frames, frames_per_window)
        height, width = ref_image.shape[-2:]

        # 2. Identity: CLIP embedding and VAE latents (RNG draw #1 is the noise-augmentation noise).
        aug_noise = randn_tensor(
            tuple(ref_image.shape), generator=generator, device=device, dtype=torch.float32
        )
        if identity is None:
            identity = self.encode_identity(ref_image, clip_image, aug_noise, noise_aug_strength)
        identity = identity.to(device, dtype)

        # 3. Conditioning tables: audio / emotion tokens with padding, pose features, time ids.
        cond = self._conditioning(
            identity,
            face_mask,
            audio_windows,
            emotion_priors,
            frames_per_window,
            (fps, motion_bucket_id, motion_bucket_id_exp),
            retrieval,
            motion_maps=motion_maps,
            motion_bucket_ids=motion_bucket_ids,
        )

        # 4. Timesteps and σ table (img2img strength; the σ table stays on the CPU in float32).
        self.scheduler.set_timesteps(steps, device=device)
        start = steps - min(int(steps * i2i_noise_strength), steps)
        timesteps, sigmas = self.scheduler.timesteps[start:], self.scheduler.sigmas[start:]
        if len(timesteps) == 0:
            raise InputError(f"i2i_noise_strength {i2i_noise_strength} leaves no denoising step")

        # 5. Initial latents: reference latent + σ_max · noise (RNG draw #2).
        if latents is None:
            latents = randn_tensor(
                self.latent_shape(length, height, width), generator=generator, device=device, dtype=dtype
            )
        latents = sampling.initial_latents(identity.ref_latent, latents.to(device, dtype), sigmas[0])

        # 6. Guidance ramps over the steps.
        scale_ref = sampling.guidance_scales(ref_scale_min, ref_scale_max, steps).to(device, dtype)
        scale_emo = sampling.guidance_scales(emo_scale_min, emo_scale_max, steps).to(device, dtype)

        # 7. Denoising: cyclic shifted windows, each stepped independently, overlaps averaged.
        adapter_scales = self.unet.adapter_scales((ip_audio_scale, ip_emo_scale))
        with adapter_scales, self.progress_bar(total=len(timesteps)) as progress:
            for i, t in enumerate(timesteps):
                shift = sampling.shift_at_step(i, shift_offset, frames_per_window)
                windows = sampling.window_indices(length, frames_per_window, overlap, shift)
                denoise = functools.partial(
                    self._denoise_windows,
                    latents,
                    cond=cond,
                    t=t,
                    sigma=sigmas[i],
                    sigma_next=sigmas[i + 1],
                    scale_ref=scale_ref[i],
                    scale_emo=scale_emo[i],
                    fast_attention=fast_attention,
                )
                stepped = window_executor(windows, window_batch, denoise, latents)
                acc = torch.zeros_like(latents)
                count = torch.zeros((1, length) + (1,) * (latents.ndim - 2), dtype=dtype, device=device)
                for idx, x in zip(windows, stepped, strict=True):  # overlaps summed in window order
                    sampling.scatter_add_frames(acc, count, idx, x)
                latents = sampling.average_frames(acc, count)
                if callback is not None:
                    callback(i, len(timesteps), latents)
                progress.update()

        if output_type == "latent":
            return PortraitPipelineOutput(frames=None, latents=latents)

        # 8. Decode all L frames in chunks, keep the first N.
        frames = torch.cat(list(self.decode_frames(latents, num_frames, decode_chunk_size)))
        return PortraitPipelineOutput(frames=frames, latents=None)


def _check_motion_maps(motion_maps: torch.Tensor, num_frames: int, size: tuple[int, int]) -> None:
    """Raise :class:`InputError` unless ``motion_maps`` is (num_frames, 3, H, W) finite in [0, 1]."""
    expected = (num_frames, 3, *size)
    if tuple(motion_maps.shape) != expected:
        raise InputError(f"motion_maps must be {expected}, got {tuple(motion_maps.shape)}")
    if not bool(torch.isfinite(motion_maps).all()) or motion_maps.min() < 0 or motion_maps.max() > 1:
        raise InputError("motion_maps must hold finite values in [0, 1]")


def _check_motion_buckets(motion_bucket_ids: torch.Tensor, num_frames: int) -> None:
    """Raise :class:`InputError` unless ``motion_bucket_ids`` is (num_frames,) finite and >= 0."""
    if tuple(motion_bucket_ids.shape) != (num_frames,):
        shape = tuple(motion_bucket_ids.shape)
        raise InputError(f"motion_bucket_ids must be ({num_frames},), got {shape}")
    if not bool(torch.isfinite(motion_bucket_ids).all()) or bool((motion_bucket_ids < 0).any()):
        raise InputError("motion_bucket_ids must hold finite values >= 0")


def _padded_buckets(motion_bucket_ids: torch.Tensor, frames_per_window: int) -> torch.Tensor:
    """(N,) per-frame buckets → (N + F,) float64 on the CPU, the F padding frames holding the last value."""
    table = motion_bucket_ids.detach().to("cpu", torch.float64)
    return torch.cat([table, table[-1:].expand(frames_per_window)])


def _window_time_ids(cond: _Conditioning, group: torch.Tensor) -> torch.Tensor:
    """(3k, 3) added time ids of k windows ``group`` (k, F): the job's ids, or per window the rounded mean
    bucket of its frames in slot 1 (``cond.motion_buckets``)."""
    if cond.motion_buckets is None:
        return cond.added_time_ids.repeat(group.shape[0], 1)
    rows = []
    for idx in group:
        row = cond.added_time_ids.clone()  # (3, 3): the same ids on the 3 guidance branches
        row[:, 1] = float(torch.round(cond.motion_buckets[idx.cpu()].mean()))
        rows.append(row)
    return torch.cat(rows)
