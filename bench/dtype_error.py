"""Error of each compute dtype (``--dtype``) against the float32 reference, same weights.

The reference is the plain, unbatched transformers forward in float32 (eager attention,
``tests/reference.py``); emi's features of the same clips, in each dtype under
``torch.autocast`` (float32 too, as the baseline: its error is float16 storage's),
are compared with it. Per array (hidden states, frame VAD, their means, clip VAD): the
worst relative difference (largest absolute difference over the array's largest
magnitude, worst clip); for the hidden states also the mean over frames of the cosine
between emi's and the reference's vectors (worst clip) and the mean absolute error
over their standard deviation. Runs on the GPU when there is one, else on the CPU.

Usage::

    python bench/dtype_error.py --size large-robust-12 --clips 8
    python bench/dtype_error.py --model path/to/checkpoint --clips 8
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from featurestore.audio import normalise  # noqa: E402
from featurestore.backbone import load_backbone  # noqa: E402
from featurestore.encode import encode_clips  # noqa: E402
from featurestore.random_backbone import write_random_backbone  # noqa: E402
from tests.reference import ReferenceForward  # noqa: E402
from tests.synth import voiced  # noqa: E402

ARRAYS = ("hidden", "frame_vad", "hidden_mean", "clip_vad")


def compare(out, refs: list[dict]) -> dict:
    """Worst relative difference per array, worst mean cosine and mean |d| / std of the
    hidden states, over the clips."""
    worst = dict.fromkeys(ARRAYS, 0.0)
    cosine, mean_error = 1.0, 0.0
    for got, ref in zip(out, refs, strict=True):
        for key in ARRAYS:
            value = np.asarray(getattr(got, key), dtype=np.float32)
            worst[key] = max(
                worst[key], float(np.abs(value - ref[key]).max() / np.abs(ref[key]).max())
            )
        a, b = got.hidden.astype(np.float32), ref["hidden"]
        cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
        cosine = min(cosine, float(cos.mean()))
        mean_error = max(mean_error, float(np.abs(a - b).mean() / b.std()))
    return {
        "worst_relative": worst,
        "min_mean_cosine": cosine,
        "hidden_mean_abs_over_std": mean_error,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="small")
    parser.add_argument("--model", default=None, help="a real checkpoint instead of random")
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--dtypes", default="float32,bfloat16,float16")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        ref = args.model or str(write_random_backbone(Path(tmp) / "b", size=args.size, seed=0))
        model = load_backbone(ref, device=device).model
        rng = np.random.default_rng(0)
        audio = [normalise(voiced(float(rng.uniform(2, 10)), seed=i)) for i in range(args.clips)]
        reference = ReferenceForward(ref)
        refs = [reference(clip, normalised=True) for clip in audio]
        print(f"{args.model or 'random ' + args.size} backbone on {device}, {args.clips} clips, "
              "against the float32 eager unbatched reference")  # fmt: skip
        print(f"{'dtype':9s} " + " ".join(f"{k + ' rel':>15s}" for k in ARRAYS)
              + f" {'cosine':>9s} {'mean|d|/std':>12s}")  # fmt: skip
        for name in args.dtypes.split(","):
            dtype = getattr(torch, name)
            try:
                out = encode_clips(
                    model, audio, batch_seconds=0, window_seconds=30, device=device, dtype=dtype
                )
            except RuntimeError as err:
                print(f"{name:9s} not supported here: {err}")
                continue
            errors = [r for r in out if isinstance(r, Exception)]
            if errors:
                print(f"{name:9s} failed: {errors[0]}")
                continue
            found = compare(out, refs)
            cells = " ".join(f"{found['worst_relative'][k]:15.5f}" for k in ARRAYS)
            cosine, error = found["min_mean_cosine"], found["hidden_mean_abs_over_std"]
            print(f"{name:9s} {cells} {cosine:9.5f} {error:12.5f}")


if __name__ == "__main__":
    main()
