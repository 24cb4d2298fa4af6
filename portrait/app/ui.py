"""Gradio web demo: ``python app.py [--host 127.0.0.1] [--port 7860] [--weights DIR] [--share] [--auth U:P]``.

Thin: widgets and calls. The logic lives in :mod:`portrait.app.handler` (rendering, limits),
:mod:`portrait.app.request` (page values → job), :mod:`portrait.app.present` (what the page shows) and
:mod:`portrait.app.workspace` (private temp files). Importing this file loads neither torch nor gradio;
``main`` loads the engine once.
The named endpoint ``/generate`` is documented in README ("Web demo").
"""

import argparse
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from portrait.app.emotion_reference import REFERENCE_SUFFIXES, save_emotion
from portrait.app.handler import Studio
from portrait.app.launch import LaunchOptions, add_app_arguments, run_app
from portrait.app.request import MAX_QA_RETRIES, MOTION_SUFFIXES, AppRequest, default_framing
from portrait.cli.common import CLI_HINTS
from portrait.constants import EMOTION_FILE_SUFFIXES
from portrait.errors import PortraitError, describe

logger = logging.getLogger("portrait.app")
# No usage telemetry to gradio's servers, whatever the environment says (set before gradio is imported).
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

ASSETS = Path(__file__).resolve().parents[1] / "assets"
SAMPLE_PORTRAIT, SAMPLE_SPEECH = ASSETS / "sample_portrait.jpg", ASSETS / "sample_speech.wav"
EXAMPLE_EMOTIONS = (("happy", 1.0), ("sad", 0.8), ("surprised", 1.5))
FRAMING = [
    ("Auto (full frame when the face is small)", "auto"),
    ("Full frame (crop animated, pasted back)", "full"),
    ("Whole photo, resized", "photo"),
    ("Square crop around the face", "crop"),
]
TIMELINE_HEADERS = ["time (s)", "emotion", "intensity"]
#: Parameters of the ``/generate`` endpoint, in order (the names of AppRequest's fields).
INPUT_NAMES = (
    "image", "audio", "emotion", "intensity", "timeline", "ref_scale", "emo_scale", "steps", "seed",
    "random_seed", "framing", "interpolate", "size", "face_box", "face_index", "max_size", "emotion_text",
    "emotion_file", "emotion_qa", "qa_threshold", "qa_retries", "motion", "retarget", "mouth",
    "emotion_from", "emotion_from_mode", "emotion_strength",
)  # fmt: skip
#: Choices of the Motion accordion (values: the ``motion`` config section's; see docs/motion.md).
RETARGET_CHOICES = [
    ("Relative (driving motion on the portrait's face)", "relative"),
    ("Offset (head position only)", "offset"),
    ("Naive (the driving points as they are)", "naive"),
    ("Fixed (a still head)", "fixed"),
]
MOUTH_CHOICES = [("Lips from the speech", "audio"), ("Lips from the driving video", "video")]
REFERENCE_MODES = [("One emotion for the whole clip (mean)", "mean"), ("Follow it over time", "timeline")]
#: The two accordions with an upload: title, help text, (widget name, label, accepted suffixes).
MOTION_ACCORDION = (
    "Motion (head movement from a driving video)",
    "The head follows the face in this video (or a `portrait-gen motion extract` track). Steering needs "
    "weights with a trained landmark guider; with the release weights alone only *Fixed* has an effect (a "
    "calmer head, experimental). See docs/motion.md.",
    ("motion", "Driving video or track .json", MOTION_SUFFIXES),
)
REFERENCE_ACCORDION = (
    "Emotion from a reference",
    "The emotion follows the facial expression in this picture or video (it overrides every other emotion "
    "control; a video's first minute is read). See docs/emotion.md.",
    ("emotion_from", "Reference picture or video", REFERENCE_SUFFIXES),
)
#: Added to the reference accordion's help when the operator allows "Save as emotion".
SAVE_HELP = " *Save as emotion* adds it to the emotion list under a new name."
#: What a visitor reads when a request fails on an unexpected error (the traceback goes to the log).
INTERNAL_ERROR = (
    "the request failed on an internal error (the server's log has the details); try other inputs"
)
#: Defaults of the QA widgets (those of portrait.eval.qa.QASettings, not imported here: it loads torch).
QA_THRESHOLD, QA_RETRIES = 0.5, 2


def _main_inputs(gr: Any, studio: Studio) -> dict[str, Any]:
    """Portrait, speech, emotion (dropdown, intensity, timeline), guidance, steps, seed, framing, QA."""
    cfg, names = studio.cfg, studio.emotion_names()
    s = cfg.sampling
    w: dict[str, Any] = {}
    w["image"] = gr.Image(label="Portrait", type="filepath", image_mode=None, sources=["upload", "webcam"])
    w["audio"] = gr.Audio(label="Speech", type="filepath", sources=["upload", "microphone"])
    with gr.Row():
        default = "neutral" if "neutral" in names else names[0]
        w["emotion"] = gr.Dropdown(names, value=default, label="Emotion")
        w["intensity"] = gr.Slider(0, 2, value=1, step=0.05, label="Emotion intensity")
    with gr.Accordion("Emotion timeline", open=False):
        gr.Markdown(
            "Each row switches the emotion at a time in seconds (the first row at 0). When the table has "
            "rows it replaces the emotion above. Intensity 0..2, blank = 1."
        )
        w["timeline"] = gr.Dataframe(
            headers=TIMELINE_HEADERS, datatype=["number", "str", "number"], row_count=1, column_count=3,
            type="array", label="Timeline",
        )  # fmt: skip
    with gr.Row():
        w["ref_scale"] = gr.Slider(0, 10, value=s.ref_scale_min, step=0.1, label="Reference guidance")
        w["emo_scale"] = gr.Slider(0, 15, value=s.emo_scale_min, step=0.1, label="Emotion guidance")
    with gr.Row():
        w["steps"] = gr.Slider(1, 100, value=s.steps, step=1, label="Steps")
        w["seed"] = gr.Number(value=s.seed, precision=0, label="Seed (-1 = random)")
        w["random_seed"] = gr.Checkbox(value=False, label="Random seed")
    with gr.Row():
        w["framing"] = gr.Radio(FRAMING, value=default_framing(cfg), label="Framing")
        w["interpolate"] = gr.Checkbox(value=cfg.video.interpolate, label="Frame interpolation (25 fps)")
        w["emotion_qa"] = gr.Checkbox(
            value=False,
            label="Emotion QA",
            info="measure the result; re-render with stronger emotion guidance when the emotion is not seen",
        )
    return w


def _advanced_inputs(gr: Any, studio: Studio) -> dict[str, Any]:
    """The "Advanced" accordion: size, face choice, full-frame cap, free emotion spec or file, QA bounds."""
    w: dict[str, Any] = {}
    with gr.Accordion("Advanced", open=False):
        w["size"] = gr.Slider(
            64, 1024, value=studio.cfg.preprocess.min_resolution, step=64, label="Size (short side, px)"
        )
        w["face_box"] = gr.Textbox(label="Face box X,Y,W,H (pixels; empty = detect)")
        w["face_index"] = gr.Number(value=None, precision=0, label="Face index (0 = largest; empty = auto)")
        w["max_size"] = gr.Number(
            value=None, precision=0, label="Full-frame long side cap (px; empty = photo)"
        )
        w["emotion_text"] = gr.Textbox(
            label="Emotion spec (overrides the emotion, intensity and timeline above)",
            placeholder="happy:0.6+surprised:0.4   or   0:neutral, 2.5:happy:0.8, 6:sad",
        )
        w["emotion_file"] = gr.File(
            label="Emotion prior or timeline file (overrides every other emotion control)",
            type="filepath", file_types=list(EMOTION_FILE_SUFFIXES),
        )  # fmt: skip
        with gr.Row():
            w["qa_threshold"] = gr.Slider(
                0, 1, value=QA_THRESHOLD, step=0.05, label="Emotion QA: least confidence to accept"
            )
            w["qa_retries"] = gr.Slider(
                0, MAX_QA_RETRIES, value=QA_RETRIES, step=1, label="Emotion QA: re-renders at most"
            )
    return w


@contextmanager
def _upload_accordion(
    gr: Any, w: dict[str, Any], title: str, text: str, upload: tuple[str, str, Sequence[str]]
) -> Iterator[None]:
    """A closed accordion ``title`` with the help ``text`` and one file upload ``(key, label, suffixes)``
    stored in ``w``; the caller's widgets follow inside the ``with`` block."""
    key, label, suffixes = upload
    with gr.Accordion(title, open=False):
        gr.Markdown(text)
        w[key] = gr.File(label=label, type="filepath", file_types=list(suffixes))
        yield


def _motion_inputs(gr: Any, studio: Studio) -> dict[str, Any]:
    """The "Motion" accordion: a driving video or track upload, the retarget mode and the lips' source."""
    m = studio.cfg.motion
    w: dict[str, Any] = {}
    with _upload_accordion(gr, w, *MOTION_ACCORDION), gr.Row():
        w["retarget"] = gr.Radio(RETARGET_CHOICES, value=m.retarget, label="Retarget")
        w["mouth"] = gr.Radio(MOUTH_CHOICES, value=m.mouth, label="Mouth")
    return w


def _reference_inputs(gr: Any, studio: Studio) -> dict[str, Any]:
    """The "Emotion from a reference" accordion: a picture/video upload, mean or timeline, strength, and,
    only when the operator allows it (``studio.save_emotions``), "Save as emotion" (``save_name``,
    ``save``, ``save_status``; not parameters of ``/generate``)."""
    w: dict[str, Any] = {}
    title, text, upload = REFERENCE_ACCORDION
    with _upload_accordion(gr, w, title, text + (SAVE_HELP if studio.save_emotions else ""), upload):
        with gr.Row():
            w["emotion_from_mode"] = gr.Radio(REFERENCE_MODES, value="mean", label="Mode")
            w["emotion_strength"] = gr.Slider(0, 2, value=1, step=0.05, label="Emotion strength")
        if studio.save_emotions:
            with gr.Row():
                w["save_name"] = gr.Textbox(label="New emotion name", placeholder="e.g. smirk")
                w["save"] = gr.Button("Save as emotion")
            w["save_status"] = gr.Markdown()
    return w


def _page(gr: Any, studio: Studio) -> tuple[dict[str, Any], list[Any], Any, Any]:
    """The two columns: every input widget by name, the output components, the Generate and Cancel buttons."""
    with gr.Row():
        with gr.Column():
            widgets = _main_inputs(gr, studio) | _advanced_inputs(gr, studio) | _motion_inputs(gr, studio)
            widgets |= _reference_inputs(gr, studio)
            with gr.Row():
                run = gr.Button("Generate", variant="primary")
                stop = gr.Button("Cancel", variant="stop")
        with gr.Column():
            outputs = [
                gr.Video(label="Result", format="mp4", interactive=False),
                gr.Image(
                    label="Face used (green; orange: crop)", type="pil", format="png", interactive=False
                ),
                gr.JSON(label="Info"),
                gr.File(label="Sidecar JSON", interactive=False),
            ]
    return widgets, outputs, run, stop


def _generate_event(gr: Any, studio: Studio) -> Callable[..., tuple[str, Any, Any, str]]:
    """The ``/generate`` callback: its parameters are :data:`INPUT_NAMES` (gradio reads the signature)."""

    # fmt: off
    def generate(image, audio, emotion, intensity, timeline, ref_scale, emo_scale, steps, seed,
                 random_seed, framing, interpolate, size, face_box=None, face_index=None, max_size=None,
                 emotion_text=None, emotion_file=None, emotion_qa=False, qa_threshold=None,
                 qa_retries=None, motion=None, retarget=None, mouth=None, emotion_from=None,
                 emotion_from_mode=None, emotion_strength=None, request: gr.Request = None,
                 progress=gr.Progress(track_tqdm=True)):  # noqa: B008
        # fmt: on  (gradio reads the annotations: gr.Request is injected, optional API parameters = None)
        given = dict(locals())
        values = AppRequest(**{name: given[name] for name in INPUT_NAMES})
        session = getattr(request, "session_hash", None)
        try:
            out = studio.run(values, lambda f, what: progress(f, desc=what), session)
        except PortraitError as err:
            raise gr.Error(studio.message(err, values), print_exception=False) from None
        except Exception:  # noqa: BLE001 - a bug: logged for the operator, one line for the visitor
            logger.exception("the request failed unexpectedly")
            raise gr.Error(INTERNAL_ERROR, print_exception=False) from None
        return str(out.video), out.preview, out.info, str(out.sidecar)

    return generate


def _save_event(gr: Any, studio: Studio) -> Callable[[Any, Any, Any], tuple[Any, str]]:
    """The "Save as emotion" callback: the new name joins the emotion dropdown, chosen."""

    def save_as_emotion(name, clip, strength):
        try:
            names = save_emotion(studio, name, clip, strength)
        except PortraitError as err:
            values = AppRequest(None, None, emotion_from=clip)
            raise gr.Error(studio.message(err, values), print_exception=False) from None
        saved = str(name).strip()
        return gr.update(choices=names, value=saved), f"Saved emotion **{saved}**."

    return save_as_emotion


def _examples(gr: Any, studio: Studio, widgets: dict[str, Any]) -> None:
    """The sample portrait and speech with the example emotions the bank has (when the assets ship)."""
    names = studio.emotion_names()
    sample = [str(SAMPLE_PORTRAIT), str(SAMPLE_SPEECH)]
    examples = [sample + [name, x] for name, x in EXAMPLE_EMOTIONS if name in names]
    if examples and SAMPLE_PORTRAIT.is_file() and SAMPLE_SPEECH.is_file():
        example_inputs = [widgets[name] for name in ("image", "audio", "emotion", "intensity")]
        gr.Examples(examples, example_inputs, label="Examples (sample portrait and speech)")


def build_demo(studio: Studio, options: LaunchOptions | None = None) -> Any:
    """The page (a ``gr.Blocks``) calling ``studio``; the event ``/generate`` is the API."""
    import gradio as gr

    options = options or LaunchOptions()
    with gr.Blocks(title="portrait: talking portrait", delete_cache=(1800, 3600)) as demo:
        gr.Markdown(
            "## portrait: a talking portrait from one photo and a speech recording\n"
            f"Audio up to {studio.max_seconds:g} s, uploads up to {options.max_file_size}. "
            "One render at a time; others wait in the queue."
        )
        widgets, outputs, run, stop = _page(gr, studio)

        def cancel(request: gr.Request) -> None:
            studio.cancel(getattr(request, "session_hash", None))

        inputs = [widgets[name] for name in INPUT_NAMES]
        event = run.click(_generate_event(gr, studio), inputs, outputs, api_name="generate")
        stop.click(cancel, None, None, cancels=[event], api_name=False)
        if "save" in widgets:  # only when the operator allows writing into the weights tree
            save_inputs = [widgets[name] for name in ("save_name", "emotion_from", "emotion_strength")]
            save_outputs = [widgets["emotion"], widgets["save_status"]]
            widgets["save"].click(_save_event(gr, studio), save_inputs, save_outputs, api_name=False)
        _examples(gr, studio, widgets)
        gr.Markdown('API: `gradio_client` endpoint `/generate` (see README, "Web demo").')
    return demo


def serve(studio: Studio, options: LaunchOptions, block: bool = True) -> Any:
    """Queue (one render at a time) and launch the page; ``block=False`` returns the running demo."""
    import gradio as gr

    demo = build_demo(studio, options)
    demo.queue(default_concurrency_limit=1, max_size=options.queue_size)
    demo.launch(
        server_name=options.host,  # explicit: GRADIO_SERVER_NAME / GRADIO_SHARE cannot widen exposure
        server_port=options.port,
        share=options.share,
        auth=options.auth,
        max_file_size=options.max_file_size,
        allowed_paths=[str(ASSETS)],  # the examples; results are in the temp dir, which gradio allows
        prevent_thread_lock=not block,
        quiet=not block,
        theme=gr.themes.Soft(),
    )
    return demo


def main(argv: Sequence[str] | None = None) -> int:
    """``python app.py``: 0 after the server stops, 1 on a PortraitError, 2 on a usage error."""
    from portrait.cli.common import configure_logging

    parser = argparse.ArgumentParser(prog="app.py", description="portrait web demo (Gradio)")
    add_app_arguments(parser)
    parser.add_argument("--debug", action="store_true", help="debug logging and full tracebacks")
    parser.add_argument("--quiet", action="store_true", help="only warnings and errors")
    args = parser.parse_args(argv)
    configure_logging(debug=args.debug, quiet=args.quiet)
    try:
        return run_app(args, serve)
    except PortraitError as err:
        if args.debug:
            logger.exception("app failed")
        print("error: " + describe(err, CLI_HINTS), file=sys.stderr)
        return 1
