"""Error of reduced-precision inference (``--dtype``) against float32, same weights.

For each dtype, the features of the same clips under ``torch.autocast`` are compared
with float32: hidden states (relative to their standard deviation), frame VAD and
clip VAD (absolute). Runs on the GPU when there is one (float16, bfloat16), else on
the CPU (bfloat16, float16 where the CPU build supports it).

Usage::

    python bench/dtype_error.py --size large-robust-12 --clips 8
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
from tests.synth import voiced  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="small")
    parser.add_argument("--model", default=None, help="a real checkpoint instead of random")
    parser.add_argument("--clips", type=int, default=8)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        ref = args.model or str(write_random_backbone(Path(tmp) / "b", size=args.size, seed=0))
        model = load_backbone(ref, device=device).model
        rng = np.random.default_rng(0)
        audio = [normalise(voiced(float(rng.uniform(2, 10)), seed=i)) for i in range(args.clips)]
        base = encode_clips(model, audio, batch_seconds=0, window_seconds=30, device=device)
        print(f"{args.model or 'random ' + args.size} backbone on {device}, {args.clips} clips")
        print(
            f"{'dtype':10s} {'hidden max|d|/std':>18s} {'hidden mean|d|/std':>19s} "
            f"{'frame VAD max|d|':>17s} {'clip VAD max|d|':>16s}"
        )
        for dtype in (torch.bfloat16, torch.float16):
            try:
                out = encode_clips(
                    model, audio, batch_seconds=0, window_seconds=30, device=device, dtype=dtype
                )
            except RuntimeError as err:
                print(f"{str(dtype):10s} not supported here: {err}")
                continue
            errors = [r for r in out if isinstance(r, Exception)]
            if errors:
                print(f"{str(dtype).split('.')[1]:10s} failed: {errors[0]}")
                continue
            h32 = np.concatenate([b.hidden.astype(np.float32) for b in base])
            hx = np.concatenate([o.hidden.astype(np.float32) for o in out])
            scale = h32.std()
            fv = max(
                np.abs(o.frame_vad - b.frame_vad).max() for o, b in zip(out, base, strict=True)
            )
            cv = max(np.abs(o.clip_vad - b.clip_vad).max() for o, b in zip(out, base, strict=True))
            print(
                f"{str(dtype).split('.')[1]:10s} {np.abs(hx - h32).max() / scale:18.4f} "
                f"{np.abs(hx - h32).mean() / scale:19.5f} {fv:17.4f} {cv:16.4f}"
            )


if __name__ == "__main__":
    main()
