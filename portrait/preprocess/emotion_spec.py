"""Resolve ``--emotion`` into per-frame emotion priors: names, intensity, mixtures and timelines.

Grammar (whitespace around tokens is ignored)::

    spec      := timeline | mix
    timeline  := entry ("," entry)*          entry := SECONDS ":" mix
    mix       := term ("+" term)*            term  := NAME [":" INTENSITY]

Examples: ``sad``, ``sad:0.6``, ``happy:0.6+surprised:0.4``, ``0:neutral, 2.5:happy:0.8, 6:sad``.

Prior arithmetic (p = a label's prior, n = the ``neutral`` prior, all 256-d vectors):

* intensity α of one label: ``n + α·(p − n)`` (0 = neutral, 1 = the label's prior exactly, up to
  :data:`MAX_INTENSITY`);
* a mixture of terms (pᵢ, αᵢ): ``n + Σ αᵢ·(pᵢ − n)``, i.e. the convex blend ``Σ (αᵢ/S)·pᵢ`` pushed to total
  intensity ``S = Σ αᵢ`` (so ``happy:0.6+surprised:0.4`` is 0.6·happy + 0.4·surprised); S must be in
  (0, MAX_INTENSITY];
* a single label at intensity 1 is the label's prior itself (no arithmetic: bit-identical to the reference).

Timelines switch between mixes at the given times; each switch is a smooth (smoothstep) ramp of
``transition`` seconds starting at the keyframe time. Frames outside ramps get their mix's prior exactly.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from portrait.constants import MAX_EMOTION_STRENGTH
from portrait.errors import InputError

#: Largest intensity (per term and per mix total); beyond it priors leave the range seen in training.
MAX_INTENSITY = MAX_EMOTION_STRENGTH
#: Default duration of a timeline transition, seconds.
DEFAULT_TRANSITION = 0.5
NEUTRAL = "neutral"

_NAME = re.compile(r"^[A-Za-z_][\w\-.]*$")


@dataclass(frozen=True)
class Mix:
    """A weighted set of emotions: ((name, intensity), ...)."""

    terms: tuple[tuple[str, float], ...]

    @property
    def total(self) -> float:
        return sum(w for _, w in self.terms)

    def as_dict(self) -> dict[str, float]:
        return {name: round(w, 4) for name, w in self.terms}


@dataclass(frozen=True)
class Keyframe:
    time: float
    mix: Mix


@dataclass(frozen=True)
class EmotionSchedule:
    """Keyframes sorted by time (the first one at time 0 holds from the start)."""

    keyframes: tuple[Keyframe, ...]
    transition: float = DEFAULT_TRANSITION

    @property
    def is_constant(self) -> bool:
        return len(self.keyframes) == 1


def _error(spec: str, token: str, problem: str) -> InputError:
    where = spec.find(token) if token else -1
    pointer = f" at position {where}" if where >= 0 else ""
    return InputError(f"bad emotion {spec!r}: {problem} (token {token!r}{pointer})")


def _parse_number(spec: str, token: str, what: str) -> float:
    try:
        value = float(token)
    except ValueError:
        raise _error(spec, token, f"{what} must be a number") from None
    if not math.isfinite(value):
        raise _error(spec, token, f"{what} must be finite")
    return value


def parse_mix(spec: str, text: str, known: set[str]) -> Mix:
    """Parse ``name[:intensity](+name[:intensity])*``; names must be in ``known``."""
    terms: list[tuple[str, float]] = []
    for raw in text.split("+"):
        term = raw.strip()
        if not term:
            raise _error(spec, text, "empty emotion term")
        name, _, weight_text = term.partition(":")
        name = name.strip()
        if not _NAME.match(name) or name not in known:
            raise _error(spec, name, f"unknown emotion; valid: {', '.join(sorted(known))}")
        weight = _parse_number(spec, weight_text.strip(), "intensity") if weight_text else 1.0
        if weight < 0 or weight > MAX_INTENSITY:
            raise _error(spec, weight_text.strip(), f"intensity must be in [0, {MAX_INTENSITY}]")
        if any(name == seen for seen, _ in terms):
            raise _error(spec, name, "emotion named twice in one mix")
        terms.append((name, weight))
    mix = Mix(tuple(terms))
    if len(terms) > 1 and mix.total == 0:
        raise _error(spec, text, "mixture intensities sum to zero")
    if mix.total > MAX_INTENSITY:
        raise _error(spec, text, f"mixture intensities sum to {mix.total:g} > {MAX_INTENSITY}")
    return mix


def parse_emotion(spec: str, known: Iterable[str], transition: float = DEFAULT_TRANSITION) -> EmotionSchedule:
    """Parse an ``--emotion`` string into a schedule (see the module docstring for the grammar)."""
    known_set = set(known)
    text = spec.strip()
    if not text:
        raise InputError(f"empty emotion; valid: {', '.join(sorted(known_set))}")
    first = text.split(",")[0].split(":")[0].strip()
    is_timeline = "," in text or _is_number(first)
    if not is_timeline:
        return EmotionSchedule((Keyframe(0.0, parse_mix(spec, text, known_set)),), transition)
    keyframes = []
    for entry in text.split(","):
        time_text, sep, mix_text = entry.strip().partition(":")
        if not sep:
            raise _error(spec, entry.strip(), "timeline entries are SECONDS:EMOTION")
        time = _parse_number(spec, time_text.strip(), "time")
        keyframes.append(Keyframe(time, parse_mix(spec, mix_text.strip(), known_set)))
    return _checked_schedule(spec, keyframes, transition)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _checked_schedule(source: str, keyframes: list[Keyframe], transition: float) -> EmotionSchedule:
    if transition < 0 or not math.isfinite(transition):
        raise InputError(f"emotion transition must be >= 0 seconds, got {transition}")
    for prev, cur in zip(keyframes, keyframes[1:], strict=False):
        if cur.time <= prev.time:
            raise _error(source, f"{cur.time:g}", "timeline times must increase")
    if keyframes[0].time < 0:
        raise _error(source, f"{keyframes[0].time:g}", "times must be >= 0")
    if keyframes[0].time != 0:
        raise _error(source, f"{keyframes[0].time:g}", "the timeline must start at 0")
    return EmotionSchedule(tuple(keyframes), transition)


def load_timeline_file(
    path: Path, known: Iterable[str], transition: float = DEFAULT_TRANSITION
) -> EmotionSchedule:
    """Read a JSON or YAML timeline: a list of ``{time, emotion, intensity?}`` (``emotion`` may be a mix)."""
    try:
        if path.suffix.lower() == ".json":
            rows = json.loads(path.read_text())
        else:
            from omegaconf import OmegaConf

            rows = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as err:  # json/yaml parsers raise many types; all mean "unreadable timeline"
        raise InputError(f"cannot read emotion timeline {path}: {err}") from err
    if isinstance(rows, dict):
        transition = float(rows.get("transition", transition))
        rows = rows.get("timeline")
    if not isinstance(rows, list) or not rows:
        raise InputError(f"emotion timeline {path} must be a non-empty list of {{time, emotion, intensity}}")
    known_set, keyframes = set(known), []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or "time" not in row or "emotion" not in row:
            raise InputError(f"emotion timeline {path}, entry {i}: needs 'time' and 'emotion', got {row!r}")
        text = str(row["emotion"]) + (f":{row['intensity']}" if "intensity" in row else "")
        keyframes.append(
            Keyframe(
                _parse_number(str(path), str(row["time"]), "time"), parse_mix(str(path), text, known_set)
            )
        )
    return _checked_schedule(str(path), keyframes, transition)


def check_schedule_fits(schedule: EmotionSchedule, duration: float) -> None:
    """Raise :class:`InputError` when a keyframe lies at or beyond the end of the audio."""
    for key in schedule.keyframes[1:]:
        if key.time >= duration:
            raise InputError(f"emotion timeline time {key.time:g} s is beyond the audio ({duration:.2f} s)")


def mix_prior(mix: Mix, bank: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The (1, D) prior of a mix (exactly the bank entry for one label at intensity 1)."""
    if len(mix.terms) == 1 and mix.terms[0][1] == 1.0:
        return bank[mix.terms[0][0]]
    if NEUTRAL not in bank:
        raise InputError("intensities and mixtures need a 'neutral' prior in the emotion bank")
    neutral = bank[NEUTRAL]
    out = neutral.clone()
    for name, weight in mix.terms:
        out = out + weight * (bank[name] - neutral)
    return out


def _smoothstep(x: float) -> float:
    x = min(max(x, 0.0), 1.0)
    return x * x * (3 - 2 * x)


def frame_blend(schedule: EmotionSchedule, time: float) -> tuple[int, int, float]:
    """(previous keyframe, current keyframe, weight of current) at ``time`` seconds."""
    keys = schedule.keyframes
    current = max(i for i, k in enumerate(keys) if k.time <= time) if time >= keys[0].time else 0
    if current == 0 or schedule.transition == 0:
        return current, current, 1.0
    progress = (time - keys[current].time) / schedule.transition
    return current - 1, current, 1.0 if progress >= 1 else _smoothstep(progress)


def schedule_priors(
    schedule: EmotionSchedule, bank: Mapping[str, torch.Tensor], num_frames: int, fps: float
) -> torch.Tensor:
    """Per-frame priors (N, D) for frame i at time i/fps, or (1, D) when the schedule is constant."""
    priors = [mix_prior(k.mix, bank) for k in schedule.keyframes]
    if schedule.is_constant:
        return priors[0].reshape(1, -1)
    rows = []
    for i in range(num_frames):
        prev, cur, weight = frame_blend(schedule, i / fps)
        rows.append(priors[cur] if weight == 1.0 else priors[prev] + weight * (priors[cur] - priors[prev]))
    return torch.cat(rows).reshape(num_frames, -1)


def schedule_summary(schedule: EmotionSchedule, duration: float) -> list[dict[str, object]]:
    """The resolved schedule once per second (for the sidecar JSON): time, emotion weights, transition."""
    out = []
    for second in range(int(math.floor(duration)) + 1):
        prev, cur, weight = frame_blend(schedule, float(second))
        mix: dict[str, float] = {}
        for index, share in ((prev, 1 - weight), (cur, weight)):
            for name, w in schedule.keyframes[index].mix.terms:
                mix[name] = round(mix.get(name, 0.0) + share * w, 4)
        out.append({"time": float(second), "emotion": {k: v for k, v in mix.items() if v}})
    return out
