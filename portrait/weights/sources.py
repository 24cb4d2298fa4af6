"""What ``portrait-gen download`` fetches: repositories, files, revisions and pinned sha256 (compat §8).

:data:`HUB_REPOS` lists the Hugging Face repositories and the files portrait takes from each,
:data:`HUB_REVISIONS` and :data:`HUB_SHA256` the revision asked for and the digest each file is checked
against, :data:`PRIOR_SHA256` those of the eight emotion priors of the DICE-Talk GitHub repository at
:data:`PRIORS_COMMIT`. :func:`manual_instructions` says how to fetch it all by hand. :data:`EVAL_WEIGHTS`:
the evaluation networks' files (``download --eval``). No network here:
:mod:`portrait.weights.hub` downloads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from portrait.layout import RELEASE_EMOTIONS, YOLO_SHA256_PINNED
from portrait.weights.i3d import I3D_FILE, I3D_URL
from portrait.weights.inception import FID_INCEPTION_FILE, FID_INCEPTION_URL
from portrait.weights.release import RELEASE_DIR, SVD_DIR, WHISPER_DIR
from portrait.weights.syncnet import SYNCNET_V2_URL


@dataclass(frozen=True)
class HubRepo:
    """One Hugging Face model repository and the files portrait takes from it.

    Attributes:
        repo_id: ``owner/name`` on the Hub.
        subdir: where its files go inside the staging folder (``""``: the folder itself).
        files: paths inside the repository (passed as ``allow_patterns``).
        optional: files that may be missing without failing the download.
        gated: the repository asks users to accept a licence before downloading.
        revision: the commit (or, while none is verified, the branch) asked for (:data:`HUB_REVISIONS`).
    """

    repo_id: str
    subdir: str
    files: tuple[str, ...]
    optional: tuple[str, ...] = ()
    gated: bool = False
    revision: str = "main"


FLOWNET_FILE = "RIFE/flownet.pkl"
YOLO_FILE = "yoloface_v5m.pt"
DICE_TALK_REPO = HubRepo(
    "EEEELY/DICE-Talk",
    "",
    tuple(f"{RELEASE_DIR}/{n}.pth" for n in ("unet", "pose_guider", "audio_linear", "emo_model"))
    + (FLOWNET_FILE, YOLO_FILE),
    optional=(FLOWNET_FILE, YOLO_FILE),
)
SVD_REPO = HubRepo(
    "stabilityai/stable-video-diffusion-img2vid-xt",
    SVD_DIR,
    (
        "unet/config.json",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.fp16.safetensors",
        "image_encoder/config.json",
        "image_encoder/model.fp16.safetensors",
        "scheduler/scheduler_config.json",
    ),
    gated=True,
)
WHISPER_REPO = HubRepo(
    "openai/whisper-tiny", WHISPER_DIR, ("config.json", "model.safetensors", "preprocessor_config.json")
)
HUB_REPOS: tuple[HubRepo, ...] = (DICE_TALK_REPO, SVD_REPO, WHISPER_REPO)

#: The ``revision=`` passed to ``snapshot_download`` per repository. The commits the released weights are
#: at could not be checked offline, so each is still the branch ``"main"`` (not a pin: a changed repository
#: is caught only by the digests of :data:`HUB_SHA256`). Put the 40-hex commit here once verified, or
#: pass ``download_weights(revisions={repo_id: commit})``.
HUB_REVISIONS: dict[str, str] = {repo.repo_id: repo.revision for repo in HUB_REPOS}
#: The sha256 of every hub file the download fetches, checked before the file is used or recorded. None:
#: the digest is not known yet (not verified offline); the file is used and the manifest records it under
#: ``"sources"`` with ``"verified": false``. The YOLO detector's comes from
#: :data:`portrait.layout.YOLO_SHA256_PINNED` (empty: the detector is never auto-loaded without
#: ``--yolo-sha256``).
HUB_SHA256: dict[str, dict[str, str | None]] = {
    repo.repo_id: {name: None for name in repo.files} for repo in HUB_REPOS
}
HUB_SHA256[DICE_TALK_REPO.repo_id][YOLO_FILE] = YOLO_SHA256_PINNED[0] if YOLO_SHA256_PINNED else None

#: Commit of github.com/toto222/DICE-Talk whose ``examples/emo/*.npy`` are the release emotion priors.
PRIORS_COMMIT = "a8a92b1"
PRIORS_URL = "https://raw.githubusercontent.com/toto222/DICE-Talk/{commit}/examples/emo/{name}.npy"
#: Folder of the priors inside the staging folder (where the converter looks for them).
PRIORS_DIR = "examples/emo"
PRIOR_SHA256: dict[str, str] = {
    "angry": "ba5a185d63a31a0c0a3eacac79e843985ff05c4605199d459d00377719b968e3",
    "contempt": "0cb2b27282f1e63149d24415ebefaf59d8ff7c567971ed809588ee00f30cb988",
    "disgusted": "097068dd93b0c5fc955740355847c8b23c2ab752abb67ac880b5f60a2048fb0e",
    "fear": "0767fa00bbea51406bfc92962b16b7cb003954b353f5b26ab7a267835a43b5a2",
    "happy": "ce84e8456729a227cb2d629b4c37c4de274800a427aa5f35b10e0fda79fec549",
    "neutral": "2cb35601ae8de98aba9293187b45f34c9cfec5f5bf3efd41d5948bc229cae21e",
    "sad": "9d323ad9b1c42a1c1ed8a8f05e6c0b7344be20e86ed48a855c657d7812545a98",
    "surprised": "0aaae02af23b5874e8407d93cf7fe89a44077efb4a7159f91e51d469c97f400e",
}
#: Where the YOLO face detector goes in the weights tree (``portrait.preprocess.detectors.YOLO_WEIGHTS``).
FACE_DETECTOR_DIR = "face_detector"


def prior_url(name: str, commit: str = PRIORS_COMMIT) -> str:
    """Raw GitHub URL of the release prior ``name``."""
    return PRIORS_URL.format(commit=commit, name=name)


def manual_instructions(root: Path, src: Path) -> str:
    """What to download by hand into ``src`` (release layout) and the command converting it into ``root``."""
    steps = []
    for repo in HUB_REPOS:
        local = src / repo.subdir if repo.subdir else src
        steps.append(f"`hf download {repo.repo_id} {' '.join(repo.files)} --local-dir {local}`")
    svd = SVD_REPO.repo_id
    return (
        f"download by hand into {src}: {'; '.join(steps)} ({svd} is gated: accept its licence on "
        f"https://huggingface.co/{svd} and log in with `hf auth login` (`huggingface-cli login`) or set "
        f"HF_TOKEN); the emotion priors {prior_url('<name>')} for <name> in {', '.join(RELEASE_EMOTIONS)} "
        f"into {src / PRIORS_DIR}/; then run `portrait-gen convert --from-dice-talk {src} --weights {root}` "
        f"({FLOWNET_FILE} and {YOLO_FILE} are optional: frame interpolation, and the YOLO face detector, "
        f"which goes to {root / FACE_DETECTOR_DIR}/)"
    )


# ------------------------------------------------------------------------------------------------------------
# `portrait-gen download --eval`: the evaluation networks (portrait.weights.eval_weights installs them)
# ------------------------------------------------------------------------------------------------------------

ARCFACE_FILE = "buffalo_l.zip"
ARCFACE_URL = "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip"


@dataclass(frozen=True)
class EvalWeight:
    """One published file and where its conversion goes.

    Attributes:
        name: the tool (``syncnet``, ``fid_inception``, ``i3d``, ``arcface``). published: its file name.
        url: where it is published. sha256: its full pinned digest (None: not known offline).
        sha256_prefix: the digest prefix its publisher recorded (None: none). target: path in the tree.
        licence: of the weights.
    """

    name: str
    published: str
    url: str
    sha256: str | None
    sha256_prefix: str | None
    target: str
    licence: str


EVAL_WEIGHTS: tuple[EvalWeight, ...] = (
    EvalWeight("syncnet", "syncnet_v2.model", SYNCNET_V2_URL, None, "961e8696",
               "syncnet/syncnet.safetensors", "research use only (VGG, University of Oxford)"),
    EvalWeight("fid_inception", FID_INCEPTION_FILE, FID_INCEPTION_URL, None, "6726825d",
               "fid_inception/fid_inception.safetensors", "Apache-2.0 (pytorch-fid; TensorFlow's Inception)"),
    EvalWeight("i3d", I3D_FILE, I3D_URL, None, None,
               "i3d/i3d_kinetics400.safetensors", "Apache-2.0 (DeepMind kinetics-i3d, via VideoGPT)"),
    EvalWeight("arcface", ARCFACE_FILE, ARCFACE_URL, None, None,
               "insightface/models/buffalo_l", "non-commercial research only (insightface)"),
)  # fmt: skip
EVAL_NAMES = tuple(w.name for w in EVAL_WEIGHTS)
