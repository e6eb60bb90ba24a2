#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with the wheels gpu_check.sh needs on a device machine, which has torch, transformers,
# safetensors, huggingface-hub, numpy, scikit-image, imageio and tqdm but no package registry (see
# /work/.library/device/KINDS.md): diffusers (and importlib_metadata, which it needs) and trimesh (mesh export).
# Run it here, then call the device tool with carry [".whl"] and `bash benchmarks/gpu_check.sh` (~7 MB travel).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl diffusers==0.42.1 importlib_metadata trimesh  # not imageio-ffmpeg (68 MB): the MP4 export fails there
ls -la .whl
