#!/usr/bin/env bash
# Packs what the side-by-side benchmark needs on the GPU machine (no registry there):
# vLLM 0.26 and its missing requirements (../shared/gpu/prepare.sh -> .gpu/p0..pN),
# FunASR and its pure-Python requirements for the peers part, asrctl's own extras,
# and Ray (--engines-per-gpu, the best part) as .gpu/r0, r1, ... (40 MiB each). ~6 min.
#
#   benchmarks/pack_gpu.sh            # from the project root
#   benchmarks/pack_gpu.sh --lean     # vLLM and asrctl's own requirements only: 4 parts,
#                                     # no FunASR (peers) and no Ray (best)
#
# Send order and the lease's commands: benchmarks/lease.sh and BENCHMARKS.md.
set -euo pipefail
ROOT="$(pwd)"
WHL="$(mktemp -d)"; RAY="$(mktemp -d)"
trap 'rm -rf "$WHL" "$RAY"' EXIT
PLAT=(--only-binary=:all: --python-version 3.12 --implementation cp
      --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux_2_28_x86_64)

ASRCTL_EXTRAS=(soundfile soxr kaldiio jiwer rapidfuzz whisper-normalizer more-itertools
    prometheus-client tiktoken silero-vad)
if [ "${1:-}" = --lean ]; then
  "$ROOT/../shared/gpu/prepare.sh" "${ASRCTL_EXTRAS[@]}"
  exit 0
fi

# PyPI has these only as sources (or as pure wheels prepare.sh would not pick): build them
pip wheel -q --no-deps -w "$WHL" funasr==1.4.16 hydra-core omegaconf==2.3.1 \
    antlr4-python3-runtime==4.9.3 jaconv jamo jieba platformdirs

"$ROOT/../shared/gpu/prepare.sh" "${ASRCTL_EXTRAS[@]}" av librosa lazy-loader audioread \
    pooch torch_complex "$WHL"/*.whl einops numba llvmlite scikit-learn joblib \
    threadpoolctl scipy kaldi-native-fbank

pip download -q --no-deps "${PLAT[@]}" -d "$RAY" "ray==2.60.0" click msgpack requests \
    urllib3 certifi charset-normalizer aiohappyeyeballs
rm -rf "$ROOT"/.gpu/r[0-9]*
tar -C "$RAY" -cf - . | split -b 40M -d -a 1 - "$WHL/ray.tar."
last=""
for part in "$WHL"/ray.tar.*; do  # one folder (one send) per 40 MiB part: r0, r1, ...
  last="$ROOT/.gpu/r${part##*.}"
  mkdir -p "$last" && mv "$part" "$last/"
done
cat > "$last/unpack_ray.sh" <<'SH'
#!/usr/bin/env bash
# On the GPU machine, after every .gpu/rN was copied to /tmp/stage: Ray's wheels -> /tmp/site
set -e
mkdir -p /tmp/raywhl && cat /tmp/stage/ray.tar.* | tar -C /tmp/raywhl -xf -
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site /tmp/raywhl/*.whl 2>&1 | grep -v -i warning | tail -3
PYTHONPATH=/tmp/site python3 -c "import ray; print('ray', ray.__version__)"
SH
du -sh "$ROOT"/.gpu/*
