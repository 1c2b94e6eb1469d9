"""Which compute dtype a CPU runs fast: bfloat16 only where the CPU has it in hardware.

bfloat16 halves the bytes a forward pass moves, and CPUs with AMX (Intel Sapphire Rapids
and later), AVX-512 BF16 (Intel Cooper Lake, AMD Zen 4 and later) or Arm's BF16
extension (Graviton 3, Apple M2 and later) multiply it natively. Elsewhere PyTorch
converts to float32 and back around every matrix product, and bfloat16 is slower than
float32 (``docs/benchmarks.md`` has both measured). The check reads the flags the
kernel reports (``/proc/cpuinfo`` on Linux, ``sysctl`` on macOS); it starts nothing.
"""

from __future__ import annotations

import platform
import subprocess
from functools import cache

# /proc/cpuinfo flag -> what to call it, in the order a message names them
_X86_FLAGS = {"amx_bf16": "AMX", "avx512_bf16": "AVX-512 BF16"}
_ARM_FLAG = "bf16"  # the "Features" line of an aarch64 /proc/cpuinfo


@cache
def native_bfloat16() -> str | None:
    """The CPU feature that runs bfloat16 natively on this machine (``"AMX"``,
    ``"AVX-512 BF16"`` or ``"Arm BF16"``), or None where it has none (or the check
    cannot tell)."""
    if platform.system() == "Darwin":
        return "Arm BF16" if _sysctl("hw.optional.arm.FEAT_BF16") == "1" else None
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            text = cpuinfo.read()
    except OSError:
        return None
    return bfloat16_from_cpuinfo(text)


def bfloat16_from_cpuinfo(text: str) -> str | None:
    """:func:`native_bfloat16` for the text of a ``/proc/cpuinfo``."""
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    for flag, name in _X86_FLAGS.items():
        if flag in flags:
            return name
    return "Arm BF16" if _ARM_FLAG in flags else None


def _sysctl(name: str) -> str | None:
    try:
        done = subprocess.run(
            ["sysctl", "-n", name], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


_ADVISED: set[str] = set()  # the float32 advice given in this process (once each)


def dtype_reason(compute_dtype: str, device: str | None, *, why: str) -> str:
    """One line saying which compute dtype a run uses and why: ``why`` is where the
    choice came from (``"--dtype"``, ``"the feature set's"``, ``"the default"``);
    ``device`` is where it runs (None: a cluster's workers, not known here).

    Example: ``"compute dtype float32 (the default; this CPU has no native bfloat16, on
    which bfloat16 runs slower than float32)"``. That advice on float32 (whether
    bfloat16 would be faster here) is given once per process: a service's later jobs,
    or a script's later runs, say ``"compute dtype float32 (the default)"``. Warnings
    on a chosen bfloat16 or float16 are given every time.
    """
    if device is None:
        return f"compute dtype {compute_dtype} ({why}, on the cluster's workers)"
    if not device.startswith("cpu"):
        return f"compute dtype {compute_dtype} ({why}, on {device})"
    native = native_bfloat16()
    if compute_dtype == "bfloat16":
        if native:
            return f"compute dtype bfloat16 ({why}; this CPU runs it natively: {native})"
        return (
            f"compute dtype bfloat16 ({why}); warning: this CPU has no native bfloat16 "
            "(AMX, AVX-512 BF16 or Arm BF16), on which it runs slower than float32"
        )
    if compute_dtype == "float16":
        return f"compute dtype float16 ({why}); warning: CPUs run float16 slowly, use it on GPUs"
    advice = (
        f"this CPU runs bfloat16 natively ({native}): --dtype bfloat16 may be faster, with "
        "features a little less exact: docs/benchmarks.md"
        if native
        else "this CPU has no native bfloat16, on which bfloat16 runs slower than float32"
    )
    if advice in _ADVISED:
        return f"compute dtype {compute_dtype} ({why})"
    _ADVISED.add(advice)
    return f"compute dtype {compute_dtype} ({why}; {advice})"
