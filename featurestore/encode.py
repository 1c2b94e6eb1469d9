"""Running a backbone over decoded clips: windows, batches, per-clip features.

Rules (see ``method.md``, pitfalls):

- Long clips are cut into windows of at most ``window_seconds``. Windows are
  frame-aligned: window ``k`` covers frames ``[a_k, b_k)`` and the samples
  ``[320 a_k, 320 (b_k - 1) + 400)``, so the frames of all windows together are exactly
  the frames of the whole clip. Each window is encoded on its own (attention does not
  cross windows); the clip is normalised as a whole before it is cut.
- Layer-norm backbones: segments sorted by length, batched up to ``batch_seconds`` of
  padded audio, with the attention mask; padding does not change a clip's features.
- Group-norm backbones never see padding: only segments of equal length share a batch.
- A batch that fails (e.g. out of memory) is retried one segment at a time; a segment
  that still fails fails its clip, not the run.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from featurestore.audio import (
    FRAME_HOP_SAMPLES,
    FRAME_WINDOW_SAMPLES,
    FRAMES_PER_SECOND,
    frames_for_samples,
)
from featurestore.backbone import EmotionBackbone


@dataclass(frozen=True)
class Segment:
    """One window of one clip: what a batch row holds."""

    clip: int  # index into the clips being encoded
    first_frame: int
    frames: int
    sample_start: int
    sample_end: int

    @property
    def samples(self) -> int:
        return self.sample_end - self.sample_start


@dataclass
class ClipFeatures:
    """Per-clip outputs. Frame arrays are stored as float16 (hidden) and float32 (VAD)."""

    hidden: np.ndarray  # (frames, hidden) float16
    frame_vad: np.ndarray  # (frames, 3) float32
    hidden_mean: np.ndarray  # (hidden,) float32, over real frames, from float32 values
    vad_mean: np.ndarray  # (3,) float32
    clip_vad: np.ndarray  # (3,) float32: the head on hidden_mean

    @property
    def frames(self) -> int:
        return int(self.hidden.shape[0])


def plan_segments(clip: int, samples: int, *, window_seconds: float | None) -> list[Segment]:
    """Cut a clip of ``samples`` (16 kHz) into nearly equal frame-aligned windows."""
    frames = frames_for_samples(samples)
    if frames == 0:
        return []
    window_frames = (
        frames if not window_seconds else max(1, int(window_seconds * FRAMES_PER_SECOND))
    )
    count = math.ceil(frames / window_frames)
    base, extra = divmod(frames, count)
    segments, first = [], 0
    for k in range(count):
        n = base + (1 if k < extra else 0)
        start = first * FRAME_HOP_SAMPLES
        end = (first + n - 1) * FRAME_HOP_SAMPLES + FRAME_WINDOW_SAMPLES
        if k == count - 1:
            end = samples  # trailing samples shorter than a hop change no frame
        segments.append(Segment(clip, first, n, start, end))
        first += n
    return segments


def plan_batches(
    segments: list[Segment], *, batch_seconds: float, allow_padding: bool
) -> list[list[Segment]]:
    """Group segments into batches of at most ``batch_seconds`` of padded audio.

    Sorted by length (longest first), so padding is small. Without ``allow_padding``
    only segments of identical length share a batch. A segment longer than the budget
    gets a batch of its own.
    """
    budget = batch_seconds * 16_000
    batches: list[list[Segment]] = []
    current: list[Segment] = []
    for seg in sorted(segments, key=lambda s: (-s.samples, s.clip, s.first_frame)):
        if current:
            longest = current[0].samples
            fits = longest * (len(current) + 1) <= budget
            same = seg.samples == longest
            if fits and (allow_padding or same):
                current.append(seg)
                continue
            batches.append(current)
        current = [seg]
    if current:
        batches.append(current)
    return batches


def _run_batch(
    model: EmotionBackbone,
    audio: list[np.ndarray],
    batch: list[Segment],
    device: str,
    dtype: torch.dtype,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Forward one batch; returns float32 (hidden, frame_vad) per segment."""
    longest = max(s.samples for s in batch)
    values = np.zeros((len(batch), longest), dtype=np.float32)
    mask = np.zeros((len(batch), longest), dtype=np.int64)
    for row, seg in enumerate(batch):
        values[row, : seg.samples] = audio[seg.clip][seg.sample_start : seg.sample_end]
        mask[row, : seg.samples] = 1
    inputs = torch.from_numpy(values).to(device)
    padded = any(s.samples != longest for s in batch)
    attention = torch.from_numpy(mask).to(device) if padded else None
    autocast = dtype != torch.float32
    with (
        torch.inference_mode(),
        torch.autocast(device_type=torch.device(device).type, dtype=dtype, enabled=autocast),
    ):
        hidden, frame_vad = model(inputs, attention_mask=attention)
    hidden = hidden.float().cpu().numpy()
    frame_vad = frame_vad.float().cpu().numpy()
    return [
        (hidden[row, : seg.frames], frame_vad[row, : seg.frames]) for row, seg in enumerate(batch)
    ]


def _run_alone(
    model: EmotionBackbone, audio: list[np.ndarray], seg: Segment, device: str, dtype: torch.dtype
) -> tuple[np.ndarray, np.ndarray] | Exception:
    try:
        return _run_batch(model, audio, [seg], device, dtype)[0]
    except Exception as err:
        return err


def encode_segments(
    model: EmotionBackbone,
    audio: list[np.ndarray],
    segments: list[Segment],
    *,
    batch_seconds: float,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Iterator[tuple[Segment, np.ndarray, np.ndarray] | tuple[Segment, Exception]]:
    """Yield ``(segment, hidden, frame_vad)`` per segment, or ``(segment, error)``."""
    for batch in plan_batches(
        segments, batch_seconds=batch_seconds, allow_padding=model.uses_layer_norm
    ):
        try:
            outputs: list = _run_batch(model, audio, batch, device, dtype)
        except Exception as err:  # retry alone: one bad or huge segment must not sink the batch
            outputs = (
                [err]
                if len(batch) == 1
                else [_run_alone(model, audio, s, device, dtype) for s in batch]
            )
        for seg, out in zip(batch, outputs, strict=True):
            yield (seg, out) if isinstance(out, Exception) else (seg, *out)


def encode_clips(
    model: EmotionBackbone,
    audio: list[np.ndarray],
    *,
    batch_seconds: float,
    window_seconds: float | None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> list[ClipFeatures | Exception]:
    """Encode normalised 16 kHz clips; one ``ClipFeatures`` or the error per clip."""
    segments = [
        seg
        for index, samples in enumerate(audio)
        for seg in plan_segments(index, len(samples), window_seconds=window_seconds)
    ]
    # Frame outputs are kept at storage precision; means come from float32 values.
    pieces: list[dict[int, tuple[np.ndarray, np.ndarray]]] = [{} for _ in audio]
    sums: list[np.ndarray | None] = [None for _ in audio]
    errors: dict[int, Exception] = {}
    for seg, *out in encode_segments(
        model, audio, segments, batch_seconds=batch_seconds, device=device, dtype=dtype
    ):
        if len(out) == 1:
            errors.setdefault(seg.clip, out[0])
            continue
        hidden, frame_vad = out
        pieces[seg.clip][seg.first_frame] = (hidden.astype(np.float16), frame_vad)
        piece_sum = hidden.sum(axis=0, dtype=np.float64)
        sums[seg.clip] = piece_sum if sums[seg.clip] is None else sums[seg.clip] + piece_sum
    results: list[ClipFeatures | Exception] = []
    head = model.classifier
    head_dtype = next(head.parameters()).dtype
    for index in range(len(audio)):
        if index in errors:
            results.append(RuntimeError(f"backbone forward failed: {errors[index]}"))
            continue
        if not pieces[index]:
            results.append(RuntimeError("no frames (clip shorter than one frame)"))
            continue
        ordered = [pieces[index][k] for k in sorted(pieces[index])]
        pieces[index] = {}
        hidden16 = np.concatenate([h for h, _ in ordered])
        frame_vad = np.concatenate([v for _, v in ordered])
        hidden_mean = (sums[index] / len(hidden16)).astype(np.float32)
        with torch.inference_mode():
            pooled = torch.from_numpy(hidden_mean)[None].to(device=device, dtype=head_dtype)
            clip_vad = head(pooled).float().cpu().numpy()[0]
        results.append(
            ClipFeatures(
                hidden=hidden16,
                frame_vad=frame_vad.astype(np.float32),
                hidden_mean=hidden_mean,
                vad_mean=frame_vad.mean(axis=0, dtype=np.float64).astype(np.float32),
                clip_vad=clip_vad.astype(np.float32),
            )
        )
    return results
