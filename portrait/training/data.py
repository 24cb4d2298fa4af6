"""Training sources and the feature cache: labels from dataset file names, the index, speaker split.

Sources (:func:`find_sources`):

* MEAD: ``SPEAKER/video/front/EMOTION/level_N/NNN.mp4`` (any prefix above ``SPEAKER``);
* CREMA-D: ``1001_DFA_ANG_HI.flv`` (speaker, sentence, emotion code, level LO/MD/HI/XX);
* RAVDESS: ``01-01-05-02-01-01-12.mp4`` (modality, channel, emotion 01-08, intensity 01/02, ..., actor);
* a CSV file ``path,emotion,intensity,speaker`` (paths relative to the CSV, inside its folder; intensity
  1-3 or empty; UTF-8 with or without a BOM, UTF-16 with a BOM, else Windows-1252 with a warning).

Every video stays inside the dataset (its resolved path, so a symlink pointing elsewhere is skipped with a
warning, and a CSV path leaving the CSV's folder is refused), and ids are unique: two paths that map to
one cache id are refused naming both. A problem of a CSV row is an :class:`InputError` naming its line.

The cache (:class:`Cache`) is a folder of one safetensors shard per video (``shards/<id>.safetensors``),
one JSON record per skipped video (``bad/<id>.json``) and ``index.json``, rebuilt from those files.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from portrait.errors import InputError, WeightsError
from portrait.layout import MANIFEST_FILE

logger = logging.getLogger(__name__)

#: Video file suffixes a source folder is searched for.
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".flv", ".webm")
#: Tree components whose outputs the cache holds: a cache is valid for a tree with the same files.
CACHED_COMPONENTS = ("vae", "image_encoder", "audio_encoder")
INDEX_FILE = "index.json"
SHARDS_DIR = "shards"
BAD_DIR = "bad"
CACHE_FORMAT = "portrait-train-cache"

CREMA_EMOTIONS = {"ANG": "angry", "DIS": "disgusted", "FEA": "fear", "HAP": "happy", "NEU": "neutral",
                  "SAD": "sad"}  # fmt: skip
CREMA_LEVELS = {"LO": 1, "MD": 2, "HI": 3, "XX": 2}
RAVDESS_EMOTIONS = {"01": "neutral", "02": "neutral", "03": "happy", "04": "sad", "05": "angry",
                    "06": "fear", "07": "disgusted", "08": "surprised"}  # fmt: skip
#: Spellings of the bank names found in dataset labels.
ALIASES = {"disgust": "disgusted", "surprise": "surprised", "fearful": "fear", "anger": "angry",
           "happiness": "happy", "sadness": "sad", "calm": "neutral"}  # fmt: skip
_CREMA_RE = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")
_RAVDESS_RE = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")
_LEVEL_RE = re.compile(r"^level_(\d)$")
#: A cache id: a file-name part of letters, digits, ``_``, ``.`` and ``-`` (never a path).
_ID_RE = re.compile(r"(?!\.+$)[A-Za-z0-9_.-]{1,200}")
#: Longest id kept as is; a longer one is shortened and made unique with a digest of the path.
MAX_ID_LENGTH = 160
#: Largest labels CSV read (bytes).
MAX_CSV_BYTES = 64 * 1024 * 1024
CSV_COLUMNS = ("path", "emotion", "intensity", "speaker")


@dataclass(frozen=True)
class Source:
    """One labelled training video.

    Attributes:
        path: the video file. id: stable cache key (relative path, ``/`` → ``__``). speaker: identity.
        emotion: label as written in the dataset (checked against the bank by :func:`check_labels`).
        level: intensity level 1-3 (MEAD levels; CREMA-D LO/MD/HI; RAVDESS normal=2, strong=3).
    """

    path: Path
    id: str
    speaker: str
    emotion: str
    level: int


def _source_id(rel: Path) -> str:
    text = rel.with_suffix("").as_posix()
    ident = re.sub(r"[^A-Za-z0-9_.-]", "_", text.replace("/", "__"))
    if len(ident) > MAX_ID_LENGTH:  # a file name must stay under the file system's 255 bytes
        ident = f"{ident[: MAX_ID_LENGTH - 17]}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
    return ident


def check_id(ident: object, where: str) -> str:
    """``ident`` when it is a valid cache id (:data:`_ID_RE`), else InputError naming ``where``."""
    if not isinstance(ident, str) or not _ID_RE.fullmatch(ident):
        raise InputError(f"{where}: invalid cache id (letters, digits, '_', '.', '-' only, not a path)")
    return ident


def label_from_path(rel: Path) -> tuple[str, str, int] | None:
    """``(speaker, emotion, level)`` from a MEAD, CREMA-D or RAVDESS path; None when none matches."""
    parts = rel.parts
    if "video" in parts and len(parts) >= 4:
        i = parts.index("video")
        rest = parts[i + 1 :]  # front/EMOTION/level_N/NNN.mp4 (or EMOTION/level_N/NNN.mp4)
        if len(rest) >= 3 and _LEVEL_RE.match(rest[-2]) and i >= 1:
            return parts[i - 1], rest[-3].lower(), int(_LEVEL_RE.match(rest[-2]).group(1))
    stem = rel.stem
    if m := _CREMA_RE.match(stem):
        return m.group(1), CREMA_EMOTIONS.get(m.group(3), m.group(3)), CREMA_LEVELS.get(m.group(4), 2)
    if m := _RAVDESS_RE.match(stem):
        return f"actor{m.group(7)}", RAVDESS_EMOTIONS.get(m.group(3), m.group(3)), int(m.group(4)) + 1
    return None


def _csv_text(path: Path) -> str:
    """The CSV's text: UTF-8 (BOM dropped), UTF-16 with a BOM, else Windows-1252 (warned); InputError naming
    the line of the first byte none of them decodes."""
    with path.open("rb") as stream:
        raw = stream.read(MAX_CSV_BYTES + 1)
    if len(raw) > MAX_CSV_BYTES:
        raise InputError(f"{path} is larger than {MAX_CSV_BYTES} bytes")
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encodings = ("utf-16",)
    else:
        encodings = ("utf-8-sig", "cp1252")
    for encoding in encodings:
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError as err:
            failed = err
            continue
        if encoding == "cp1252":
            line = raw[: failed.start].count(b"\n") + 1
            logger.warning("%s is not UTF-8 (line %d): read as Windows-1252", path, line)
        return text
    line = raw[: failed.start].count(b"\n") + 1
    raise InputError(
        f"{path}:{line}: cannot decode byte {failed.start} as {' or '.join(encodings)}; save as UTF-8"
    )


def _csv_row(path: Path, line: int, row: dict[str, str], root: Path) -> Source:
    """One CSV row as a :class:`Source` (InputError ``path:line: ...`` for a bad row)."""
    where = f"{path}:{line}"
    rel, emotion, speaker = (row[key].strip() for key in ("path", "emotion", "speaker"))
    if not rel or not emotion or not speaker:
        raise InputError(f"{where}: path, emotion and speaker must not be empty")
    level = (row.get("intensity") or "").strip() or "2"
    if level not in ("1", "2", "3"):
        raise InputError(f"{where}: intensity must be 1, 2 or 3 (or empty), got {level!r}")
    if any(ord(char) < 32 for char in rel):
        raise InputError(f"{where}: the path contains a control character")
    try:
        video = (root / rel).resolve()
    except (OSError, RuntimeError) as err:  # a symlink loop, a name the system refuses
        raise InputError(f"{where}: cannot resolve {rel!r} ({type(err).__name__})") from None
    if not video.is_relative_to(root):
        raise InputError(f"{where}: {rel} is outside the dataset folder {root} (the CSV's folder)")
    return Source(video, _source_id(video.relative_to(root)), speaker, emotion.lower(), int(level))


def _from_csv(path: Path) -> list[Source]:
    root = path.parent.resolve()
    reader = csv.reader(io.StringIO(_csv_text(path)))
    try:
        header = [name.strip().lower() for name in next(reader)]
    except (StopIteration, csv.Error) as err:
        raise InputError(f"{path}:1: no CSV header ({err or 'empty file'})") from None
    if not {"path", "emotion", "speaker"} <= set(header) or len(set(header)) != len(header):
        raise InputError(
            f"{path}:1: the CSV needs the columns {','.join(CSV_COLUMNS)} (intensity may be empty)"
        )
    sources, end = [], reader.line_num
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            raise InputError(f"{path}:{end + 1}: bad CSV ({err})") from None
        line, end = end + 1, reader.line_num
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(header):
            raise InputError(f"{path}:{line}: has {len(cells)} cells; the header has {len(header)}")
        sources.append((line, _csv_row(path, line, dict(zip(header, cells, strict=True)), root)))
    return _unique(sources, path)


def _unique(sources: list[tuple[int | str, Source]], where: Path) -> list[Source]:
    """The sources, refusing two that map to one cache id (each named by its line or path)."""
    seen: dict[str, int | str] = {}
    for place, source in sources:
        if source.id in seen:
            raise InputError(
                f"{where}: {seen[source.id]} and {place} map to the same cache id {source.id!r} (the same "
                "video twice, or names that differ only in characters replaced by '_'); keep one or rename"
            )
        seen[source.id] = place
    return [source for _, source in sources]


def find_sources(src: Path) -> list[Source]:
    """Every labelled video under ``src`` (a folder or a CSV), sorted by id.

    Raises:
        InputError: ``src`` is missing, or holds no video with a recognised layout.
    """
    src = Path(src)
    if src.is_file() and src.suffix.lower() == ".csv":
        sources = _from_csv(src)
    elif src.is_dir():
        found, root = [], src.resolve()
        for path in sorted(p for p in src.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES):
            rel = path.relative_to(src)
            label = label_from_path(rel)
            if label is None:
                continue
            if not path.resolve().is_relative_to(root):
                logger.warning("skipping %s: it links to a file outside the dataset %s", path, src)
                continue
            found.append((str(rel), Source(path, _source_id(rel), *label)))
        sources = _unique(found, src)
    else:
        raise InputError(f"training source {src} is neither a folder nor a .csv file")
    if not sources:
        raise InputError(
            f"no usable video under {src}: expected MEAD (SPEAKER/video/front/EMOTION/level_N/NNN.mp4), "
            "CREMA-D (1001_DFA_ANG_HI.flv), RAVDESS (01-01-05-02-01-01-12.mp4) names or a CSV "
            "path,emotion,intensity,speaker"
        )
    return sorted(sources, key=lambda s: s.id)


def canonical_emotion(label: str) -> str:
    return ALIASES.get(label.lower(), label.lower())


def check_labels(sources: Iterable[Source], bank_names: Sequence[str]) -> None:
    """Raise :class:`InputError` naming every label that is not an emotion of the bank."""
    unknown = sorted({s.emotion for s in sources if canonical_emotion(s.emotion) not in bank_names})
    if unknown:
        raise InputError(
            f"unknown emotion label(s) {', '.join(unknown)}; the bank has {', '.join(bank_names)} "
            "(add one with `portrait-gen emotions add` or fix the labels)"
        )


def select_shard(sources: Sequence[Source], shard: tuple[int, int]) -> list[Source]:
    """Sources of worker ``I`` of ``N`` (``shard = (I, N)``, 0-based): every N-th in id order."""
    index, count = shard
    if count < 1 or not 0 <= index < count:
        raise InputError(f"--shard must be I/N with 0 <= I < N, got {index}/{count}")
    return list(sources[index::count])


def speaker_split(speakers: Iterable[str], val_fraction: float) -> set[str]:
    """Validation speakers: the ``ceil(fraction·S)`` speakers (at least one when S ≥ 2) whose sha256 is
    smallest: deterministic, independent of the order the videos were processed in."""
    unique = sorted(set(speakers))
    if len(unique) < 2 or val_fraction <= 0:
        return set()
    count = min(max(1, round(val_fraction * len(unique) + 0.4999)), len(unique) - 1)
    ranked = sorted(unique, key=lambda s: hashlib.sha256(s.encode()).hexdigest())
    return set(ranked[:count])


def weights_hash(root: Path) -> str:
    """sha256 over the manifest entries of :data:`CACHED_COMPONENTS` (other components may change)."""
    path = Path(root) / MANIFEST_FILE
    if not path.is_file():
        raise WeightsError(f"{path} is missing: the cache needs a weights tree with a manifest")
    files = json.loads(path.read_text())["files"]
    chosen = {k: v for k, v in sorted(files.items()) if k.split("/")[0] in CACHED_COMPONENTS}
    return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Entry:
    """One cached video of the index."""

    id: str
    speaker: str
    emotion: str
    level: int
    frames: int
    split: str  # "train" or "val"


class Cache:
    """A prepared cache folder: its index, entries and shards (read side)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        path = self.root / INDEX_FILE
        if not path.is_file():
            raise InputError(
                f"{self.root} is not a training cache ({INDEX_FILE} missing); run `train prepare`"
            )
        try:
            self.index = json.loads(path.read_text())
            if self.index.get("format") != CACHE_FORMAT:
                raise InputError(f"{path} is not a {CACHE_FORMAT} index")
            self.entries = [Entry(**e) for e in self.index["entries"]]
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
            raise InputError(
                f"{path} is not a readable {CACHE_FORMAT} index ({type(err).__name__})"
            ) from None
        for number, entry in enumerate(self.entries):
            check_id(entry.id, f"{path} entry {number}")
        if not self.entries:
            raise InputError(f"the cache {self.root} holds no usable video (see {BAD_DIR}/)")

    def check_weights(self, root: Path) -> None:
        """Raise :class:`InputError` when the cache was made with another weights tree."""
        have, want = self.index["weights_hash"], weights_hash(root)
        if have != want:
            raise InputError(
                f"the cache {self.root} was made with another weights tree (hash {have[:12]}, {root} has "
                f"{want[:12]}): its latents and features do not fit; rerun `train prepare --weights {root}`"
            )

    def split(self, name: str) -> list[Entry]:
        return [e for e in self.entries if e.split == name]

    def load(self, entry_id: str) -> dict:
        from safetensors.torch import load_file

        return load_file(str(self.root / SHARDS_DIR / f"{entry_id}.safetensors"))
