#!/usr/bin/env bash
# The GPU checks in one run, on a machine with an NVIDIA GPU, in under 8 minutes:
#
#   1. tests/test_device_reference.py on CUDA: float32 features equal the plain unbatched
#      float32 reference (float16 storage error), one clip per forward and in padded
#      batches; bfloat16 features within the Benchmarks page's bound;
#   2. bench/extract_throughput.py --device cuda: pure forward, naive loop and emi
#      (library, CLI) in float32, bfloat16 and float16 for the base and large-robust-12
#      shapes, padded batches of 120 s, the padded-frame share, the GPU's peak memory;
#   3. bench/device_feed.py: is the GPU fed by the CPU side (decode, batch, write)?
#
# and writes one JSON of everything (environment, each step's status, seconds and
# results) to $1, else $OUT/gpu_check.json, else bench-results/gpu_check.json.
#
# The GPU machine may lack emi's own dependencies (zarr, dask, soundfile, ...) and reach
# no package index. Fetch their wheels first, on a machine with pip and the network:
#
#   bash bench/gpu_check.sh --fetch-wheels      # into .whl/ (git ignores it)
#
# and bring .whl/ along; the check installs from it when an import fails. Environment:
# GPU_CHECK_MINUTES (audio per throughput case, default 20), GPU_CHECK_SIZES (default
# base,large-robust-12), PYTHON (default python3), GPU_CHECK_DEVICE (default cuda; cpu
# runs the same steps on the CPU, to try the script itself). The wheels listed below are the ones
# a CUDA image of PyTorch and transformers lacked; another image may lack more: the
# import check names what is missing.
set -uo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"
python="${PYTHON:-python3}"

# The packages emi imports on the check's path that a CUDA image of PyTorch and
# transformers tends not to have; versions as the CPU install resolves them.
wheels=(
  zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0
  dask==2026.8.0 distributed==2026.8.0 partd==1.4.2 locket==1.0.0 tblib==3.2.2
  zict==3.0.0 tornado==6.6.1 soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 soxr==1.1.0
)

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  mkdir -p .whl
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
  py="${GPU_PYTHON_VERSION:-3.12}"
  for spec in "${wheels[@]}"; do
    args=(--no-deps --only-binary=:all: --python-version "$py" --implementation cp -d .whl)
    for n in 17 24 27 28 31 34; do args+=(--platform "manylinux_2_${n}_x86_64"); done
    args+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
    python3 -m pip download -q "${args[@]}" "$spec" || { echo "could not fetch $spec" >&2; exit 1; }
  done
  echo "wheels for Python $py in .whl/ ($(ls .whl | wc -l) files, $(du -sh .whl | cut -f1))"
  exit 0
fi

out="${1:-${OUT:-bench-results}/gpu_check.json}"
mkdir -p "$(dirname "$out")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"

needs='import zarr, dask, distributed, soundfile, soxr, numcodecs, xxhash, torch, transformers'
if ! "$python" -c "$needs" 2>/dev/null; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --target "$work/site" .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:$work/site"
  fi
  "$python" -c "$needs" || {
    echo "emi's dependencies are missing (above): run 'bash bench/gpu_check.sh" \
      "--fetch-wheels' where pip reaches PyPI and bring .whl/ along" >&2
    exit 2
  }
fi
device="${GPU_CHECK_DEVICE:-cuda}"  # cpu: a dry run of this script's own steps
if [[ "$device" == cuda ]]; then
  "$python" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' || {
    echo "torch sees no CUDA GPU here: nothing to check" >&2
    exit 2
  }
fi

step() {  # step NAME SECONDS-LIMIT COMMAND...: run, keep status, seconds and log
  local name="$1" limit="$2"
  shift 2
  local start=$SECONDS
  echo "== $name (at most ${limit}s): $*"
  timeout "$limit" "$@" 2>&1 | tee "$work/$name.log"
  local status=${PIPESTATUS[0]}
  echo "$name $status $((SECONDS - start))" >>"$work/steps"
  echo "== $name: exit $status after $((SECONDS - start))s"
}

minutes="${GPU_CHECK_MINUTES:-20}"
sizes="${GPU_CHECK_SIZES:-base,large-robust-12}"
step reference 90 env EMI_TEST_DEVICE="$device" "$python" -m pytest -q -p no:cacheprovider \
  -o addopts= tests/test_device_reference.py --junitxml "$work/reference.xml"
step throughput 270 "$python" bench/extract_throughput.py --device "$device" --sizes "$sizes" \
  --dtypes float32,bfloat16,float16 --batch-seconds 120 --minutes "$minutes" \
  --repeats 1 --skip-memory --json "$work/throughput.json"
step device_feed 90 "$python" bench/device_feed.py --minutes 3 --cores 2,8 --repeats 1 \
  --json "$work/device_feed.json"

"$python" - "$work" "$out" <<'EOF'
import json, platform, subprocess, sys, xml.etree.ElementTree as ET
from pathlib import Path

import torch
import transformers

work, out = Path(sys.argv[1]), Path(sys.argv[2])
steps = {}
for line in (work / "steps").read_text().splitlines():
    name, status, seconds = line.split()
    steps[name] = {"exit": int(status), "seconds": int(seconds)}
    result = work / f"{name}.json"
    if result.exists():
        steps[name]["result"] = json.loads(result.read_text())
    log = (work / f"{name}.log").read_text(errors="replace").splitlines()
    steps[name]["log_tail"] = log[-40:]
junit = work / "reference.xml"
if junit.exists():
    cases = ET.parse(junit).getroot().iter("testcase")
    steps["reference"]["tests"] = {
        f"{c.get('name')}": "failed" if c.find("failure") is not None or c.find("error") is not None
        else "skipped" if c.find("skipped") is not None else "passed"
        for c in cases
    }
try:
    smi = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()
except OSError:  # no NVIDIA driver tools (a dry run on a CPU)
    smi = None
report = {
    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    "nvidia_smi": smi,
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "transformers": transformers.__version__,
    "python": platform.python_version(),
    "ok": all(s["exit"] == 0 for s in steps.values()),
    "steps": steps,
}
out.write_text(json.dumps(report, indent=2))
print(f"wrote {out}: ok={report['ok']}, " + ", ".join(f"{k} exit {v['exit']} in {v['seconds']}s" for k, v in steps.items()))
sys.exit(0 if report["ok"] else 1)
EOF
