"""Where a forward pass spends its time, per compute dtype: PyTorch's profiler over the
backbone alone (preloaded, normalised audio; one clip per forward, as emi runs on a
CPU), the operators that take the most time side by side for each dtype.

Run it where ``--dtype bfloat16`` is not faster than float32 to see why (on CPUs
without native bfloat16 the matrix products convert their operands on every call).

Usage::

    python bench/dtype_profile.py --size small --seconds 60 --dtypes float32,bfloat16
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from featurestore.audio import normalise  # noqa: E402
from featurestore.backbone import load_backbone  # noqa: E402
from featurestore.cpu_dtype import native_bfloat16  # noqa: E402
from featurestore.part_task import COMPUTE_DTYPES  # noqa: E402
from featurestore.random_backbone import write_random_backbone  # noqa: E402
from tests.synth import voiced  # noqa: E402


def forward_all(model, clips: list[torch.Tensor], dtype: str, cast_weights: bool) -> None:
    autocast = dtype != "float32" and not cast_weights
    with torch.inference_mode(), torch.autocast("cpu", COMPUTE_DTYPES[dtype], enabled=autocast):
        for clip in clips:
            model(clip)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="small")
    parser.add_argument("--seconds", type=float, default=60.0, help="audio profiled")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--top", type=int, default=8, help="operators shown per case")
    args = parser.parse_args()
    capability = torch.backends.cpu.get_cpu_capability()
    print(
        f"native bfloat16: {native_bfloat16() or 'none'}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, CPU capability {capability}"
    )
    rng = np.random.default_rng(0)
    lengths, total = [], 0.0
    while total < args.seconds:
        lengths.append(float(np.clip(rng.lognormal(np.log(6.0), 0.5), 1.0, 15.0)))
        total += lengths[-1]
    audio = [torch.from_numpy(normalise(voiced(s, seed=i)))[None] for i, s in enumerate(lengths)]
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_random_backbone(Path(tmp) / "b", size=args.size, seed=0)
        base = load_backbone(str(ckpt)).model
        cases = []
        for dtype in args.dtypes.split(","):
            cases.append((dtype, False))
            if dtype != "float32":
                cases.append((dtype, True))
        for dtype, cast in cases:
            model = base.to(COMPUTE_DTYPES[dtype]) if cast else base.float()
            clips = [a.to(COMPUTE_DTYPES[dtype]) if cast else a for a in audio]
            forward_all(model, clips[:1], dtype, cast)  # warm-up
            start = time.perf_counter()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                forward_all(model, clips, dtype, cast)
            wall = time.perf_counter() - start
            how = "weights cast" if cast else ("autocast" if dtype != "float32" else "plain")
            print(f"\n[{args.size}, {dtype}, {how}] {total:.0f} s of audio in {wall:.1f} s "
                  f"(profiled: {total / wall:.1f} x real time)")  # fmt: skip
            table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top)
            print(table)


if __name__ == "__main__":
    main()
