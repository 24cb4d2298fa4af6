"""Names and numbers that several layers share, defined once (no imports: cheap for every entry point)."""

from __future__ import annotations

#: Sample rate of the audio the Whisper encoder reads (Hz).
SAMPLE_RATE = 16000
#: Seconds of audio per 40-ms unit: the reference's time base (two units per 12.5-fps video frame).
UNIT_SECONDS = 0.04

#: ``--emotion`` files: a prior (one 256-d vector) ...
EMOTION_PRIOR_SUFFIXES: tuple[str, ...] = (".safetensors", ".npy")
#: ... or a timeline (keyframes of emotion specs).
EMOTION_TIMELINE_SUFFIXES: tuple[str, ...] = (".json", ".yaml", ".yml")
EMOTION_FILE_SUFFIXES: tuple[str, ...] = EMOTION_PRIOR_SUFFIXES + EMOTION_TIMELINE_SUFFIXES

#: Face detectors by name (``auto``: YOLOv5-face when its file is present, else insightface, else dlib).
DETECTOR_NAMES: tuple[str, ...] = ("auto", "yolo", "insightface", "dlib")

#: Floating-point precisions by name, each with the ``torch`` attribute of its dtype (a string: this module
#: imports nothing; :func:`portrait.weights.load.torch_dtype` does the lookup).
PRECISIONS: dict[str, str] = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
#: ``runtime.dtype`` / ``--dtype``: ``auto`` (fp16 on CUDA, fp32 elsewhere) or a precision.
RUNTIME_DTYPES: tuple[str, ...] = ("auto", *PRECISIONS)
#: Precisions of stored tensors: ``convert --dtype`` (which adds ``keep``), ``train prepare --store-dtype``.
STORE_DTYPES: tuple[str, ...] = ("fp16", "fp32")
#: ``runtime.compile``: off, the repeated UNet blocks one class at a time (short compile), or the whole UNet.
COMPILE_MODES: tuple[str, ...] = ("off", "blocks", "full")
#: ``runtime.offload``: everything on the GPU, whole models on the CPU when idle, or layer-by-layer offload.
OFFLOAD_MODES: tuple[str, ...] = ("none", "model", "sequential")
#: Which face to animate among several: the reference's ``maxface`` rule, or the true largest.
FACE_SELECTIONS: tuple[str, ...] = ("reference", "largest")

#: Motion control (``motion.*``, docs/motion.md): how driving landmarks land on the portrait ...
RETARGET_MODES: tuple[str, ...] = ("relative", "offset", "naive", "fixed")
#: ... where the lips come from ...
MOUTH_MODES: tuple[str, ...] = ("audio", "video")
#: ... how a driving track shorter than the audio is extended, and the largest pose/expression gain.
EXTEND_MODES: tuple[str, ...] = ("pingpong", "hold")
MAX_MOTION_GAIN = 4.0

#: Emotion from a reference clip (``--emotion-from``, docs/emotion.md): one mixture or a timeline ...
EMOTION_FROM_MODES: tuple[str, ...] = ("mean", "timeline")
#: ... which embedder maps the clip to the bank (``auto``: learned when the weights have it) ...
EMOTION_EMBEDDERS: tuple[str, ...] = ("auto", "learned", "classifier")
#: ... and the largest total intensity of its mixture (= ``preprocess.emotion.MAX_INTENSITY``).
MAX_EMOTION_STRENGTH = 2.0

#: Exit codes of every entry point.
EXIT_OK = 0
EXIT_ERROR = 1  # a PortraitError: bad input, weights, ffmpeg; or a failed/invalid batch job
EXIT_USAGE = 2  # argparse's code for bad flags
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM
