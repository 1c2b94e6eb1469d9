"""How these heads were made: by emi at commit c95217d, the version before heads
standardized their inputs (cards without ``standardize``, ``layer_norm`` or ``mix``).

Run from a checkout of that commit (``git worktree add /tmp/old c95217d``)::

    HF_HUB_OFFLINE=1 PYTHONPATH=/tmp/old python make.py OUT WORK

It builds the layered synthetic store of ``tests/test_layer_heads.py`` (60 clips, tiny
random backbone, seed 0), trains four small heads for 2 epochs and writes each head's
raw predictions on clips 40-59 to ``predictions.csv``. ``tests/test_heads_learn.py``
rebuilds the same store and checks that this version predicts the same.
"""

import csv
import shutil
import sys
from pathlib import Path

from featurestore.random_backbone import write_random_backbone
from featurestore.store import FeatureStore
from manifests import read_labels
from models.head_files import load_head
from models.sequences import load_sequences
from models.training import HeadPlan, TrainSettings, predict_batches, train_heads
from tests.test_layer_heads import make_layer_store
from tests.test_models import write_labels

out, work = Path(sys.argv[1]), Path(sys.argv[2])
backbone = write_random_backbone(work / "tiny", size="tiny", seed=0)
targets = make_layer_store(work / "feats.zarr", backbone, clips=60)
ids = sorted(targets)
train = write_labels(work / "train.csv", targets, ids[:40])
val = write_labels(work / "valid.csv", targets, ids[40:])
store = FeatureStore.open(work / "feats.zarr")
settings = TrainSettings(epochs=2, lr=1e-2, seed=1)
sizes = {"lstm_hidden": 8, "mlp_hidden": 8}
plans = [
    HeadPlan("compact-last", preset="compact", sizes=sizes, settings=settings),
    HeadPlan(
        "compact-weighted", preset="compact", sizes=sizes, settings=settings, layer="weighted"
    ),
    HeadPlan("mean-linear-last", preset="mean-linear", settings=settings),
    HeadPlan("mean-linear-weighted", preset="mean-linear", settings=settings, layer="weighted"),
]
if out.exists():
    shutil.rmtree(out)
trained = train_heads(store, read_labels(train), read_labels(val), plans, out)
data = load_sequences([store], ids[40:], crops=[None], layers=(None, 0, 1, 2))
with (out / "predictions.csv").open("w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["head", "clip_id", "target", "value"])
    for t in trained:
        head = load_head(t.folder)
        raw = predict_batches(head.model, data, ids[40:], device="cpu")
        for clip_id in ids[40:]:
            for target, value in zip(head.targets, raw[clip_id], strict=True):
                writer.writerow([head.name, clip_id, target, repr(float(value))])
for png in out.rglob("*.png"):
    png.unlink()
for summary in ("summary.csv", "summary.json"):
    (out / summary).unlink()
