#!/usr/bin/env bash
# One device call of the side-by-side benchmark, on the GPU machine:
#   bash benchmarks/lease.sh STEP [side_by_side.py args...]
# STEP names the log (/tmp/bench/STEP.log). STEP "unpack" first unpacks the packs that
# benchmarks/pack_gpu.sh made (send .gpu/p0..pN-1, r0, r1, ... with `cp .gpu/X/* /tmp/stage/`,
# one call each; this call carries the last .gpu/pN) and then runs side_by_side.py with
# its arguments (the start part, on a fresh machine). The results file is /tmp/bench/sbs.json, merged across calls, and it
# is copied to $OUT every 5 s, with the logs, so a call cut at its limit still returns it.
# LIMIT (default 560 s) bounds side_by_side.py within the call's 600 s.
set -u
step=$1; shift
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
mkdir -p /tmp/bench
if [ "$step" = unpack ]; then
  last=${PACK:-$(ls -d .gpu/p* | sort -V | tail -1)}
  cp "$last"/* /tmp/stage/ || exit 1
  t0=$(date +%s)
  bash "$last"/unpack.sh || exit 1
  [ -f /tmp/stage/unpack_ray.sh ] && bash /tmp/stage/unpack_ray.sh
  echo "unpack $(( $(date +%s) - t0 )) s"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
# the copier's output goes nowhere, so a pipe on this script's output closes when it ends
( while sleep 5; do cp /tmp/bench/sbs.json /tmp/bench/*.log "$OUT"/ 2>/dev/null; done ) \
  >/dev/null 2>&1 &
copier=$!
limit=${LIMIT:-560}
timeout "$limit" python3 benchmarks/side_by_side.py --out /tmp/bench/sbs.json "$@" \
  > "/tmp/bench/$step.log" 2>&1
echo "rc=$?"
kill "$copier" 2>/dev/null
cp /tmp/bench/sbs.json /tmp/bench/*.log "$OUT"/ 2>/dev/null
grep "^== " "/tmp/bench/$step.log"
python3 - <<'EOF'
import json
d = json.load(open("/tmp/bench/sbs.json"))
for k, v in d.items():
    if not isinstance(v, (dict, list)):
        print(k, v)
EOF
