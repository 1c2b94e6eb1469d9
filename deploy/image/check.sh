#!/usr/bin/env bash
# Checks a built image as a user runs it (no network, its default user): `emi --version`;
# a random tiny backbone, a synthetic corpus, `emi extract`, `emi train`, `emi score`; and
# `emi serve` with a token file answering /readyz. `./run image --check` runs this.
#
#   deploy/image/check.sh [IMAGE]     default localhost/emi:<version>
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/pyproject.toml" | head -n 1)"
image="${1:-localhost/emi:$version}"
say() { printf '[image check] %s\n' "$*" >&2; }

say "$image: $(podman run --rm --network none "$image" emi --version)"
started=$SECONDS
podman run --rm -i --network none --env HF_HUB_OFFLINE=1 "$image" bash -s <<'INSIDE'
set -euo pipefail
cd /tmp
emi model init-random backbone --size tiny
python - <<'PY'
from manifests.synthetic import write_corpus
write_corpus("corpus", clips=12, seed=5, min_seconds=1.0, max_seconds=2.0)
PY
emi extract corpus/audio features.zarr --model backbone --quiet
emi train features.zarr --labels corpus/train_split.csv --val-labels corpus/valid_split.csv \
  --out heads/ml --preset mean-linear --quiet
emi score corpus/audio --head heads/ml -o scores.csv --quiet
python - <<'PY'
import csv
rows = list(csv.reader(open("scores.csv")))
assert len(rows) == 13 and len(rows[0]) == 7, rows[:2]
print(f"emi score: {len(rows) - 1} clips x {len(rows[0]) - 1} intensities")
PY
python -c 'import secrets; print(secrets.token_urlsafe())' > token
mkdir -p stores state
emi serve --stores stores --heads heads --state state --source-root corpus \
  --host 0.0.0.0 --port 8000 --token-file token > serve.log 2>&1 &
python - <<'PY'
import time
import httpx
deadline = time.monotonic() + 120
while True:
    try:
        answer = httpx.get("http://127.0.0.1:8000/readyz", timeout=2)
        if answer.status_code == 200:
            print(f"emi serve: /readyz {answer.status_code} {answer.json()}")
            break
    except httpx.HTTPError:
        pass
    if time.monotonic() > deadline:
        raise SystemExit("emi serve not ready in 120 s:\n" + open("serve.log").read())
    time.sleep(0.5)
token = open("token").read().strip()
jobs = httpx.get("http://127.0.0.1:8000/v1/heads", headers={"Authorization": f"Bearer {token}"})
assert jobs.status_code == 200, jobs.text
PY
kill %1
wait %1 || true
INSIDE
say "extract, train, score and serve inside $image in $((SECONDS - started)) s"

# docs/slurm.md, section 3: worker jobs of a one-node SLURM cluster on this machine
# (tests/slurm.py) running their worker in this image under Podman; the driver in the
# project's environment. The command below is the page's, as written.
if [ "${EMI_IMAGE_CHECK_SLURM:-1}" = 1 ] && [ "$image" = "localhost/emi:$version" ]; then
  work="$(mktemp -d)"
  export SHARED="$work/shared" PARTITION=debug DEVICE=cpu HOME="$work/home" HF_HUB_OFFLINE=1
  export EMI_CACHE="$HOME/.cache/emi" PATH="$here/.venv/bin:$PATH"
  export DASK_JOBQUEUE__SLURM__SCHEDULER_OPTIONS__HOST=127.0.0.1  # loopback, here only
  export DASK_JOBQUEUE__SLURM__CORES=1 DASK_JOBQUEUE__SLURM__MEMORY=2GB
  eval "$("$here/.venv/bin/python" -m tests.slurm up --dir "$work/slurm")"
  trap '"$here/.venv/bin/python" -m tests.slurm down --dir "$work/slurm"; rm -rf "$work"' EXIT
  emi model init-random "$SHARED/models/backbone" --size tiny >/dev/null
  "$here/.venv/bin/python" -c 'import sys; from manifests.synthetic import write_corpus
write_corpus(sys.argv[1], clips=8, seed=5, min_seconds=1.0, max_seconds=2.0)' "$work/corpus"
  mv "$work/corpus/audio" "$SHARED/audio"
  started=$SECONDS
  cd "$here"
  DASK_JOBQUEUE__SLURM__PYTHON="podman run --rm --network host --user $(id -u):$(id -g) --volume $SHARED:$SHARED localhost/emi:0.1.0 python" emi extract $SHARED/audio $SHARED/features.zarr --model $SHARED/models/backbone --cluster slurm --cluster-jobs 2 --cluster-queue $PARTITION --device $DEVICE
  # each job's worker ran the image's Python (emi worker names it in the job's log)
  in_image="$(grep -l "emi worker: cpu worker for .* (/opt/emi/bin/python)" \
    "$EMI_CACHE"/slurm-logs/emi-worker-*.err | wc -l)"
  [ "$in_image" -ge 1 ] || { say "no worker job ran the image's Python"; exit 1; }
  say "SLURM worker jobs in $image (Podman): 8 clips in $((SECONDS - started)) s, $in_image jobs"
fi
