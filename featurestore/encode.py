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
- The device step (:class:`BatchEncoder`) sends back float16 frames and float32 sums
  only; a part task runs it while other threads decode and write
  (``featurestore.pipeline``).
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
from featurestore.backbone import BackboneIdentity, EmotionBackbone


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


@dataclass
class SegmentOutput:
    """What the device sends back for one segment: only float16 frames and small sums."""

    hidden: np.ndarray  # (frames, hidden) float16
    frame_vad: np.ndarray  # (frames, 3) float32
    hidden_sum: np.ndarray  # (hidden,) float32: sum over frames of the float32 states
    vad_sum: np.ndarray  # (3,) float32
    finite: bool  # every stored value finite (no float16 overflow)


class BatchEncoder:
    """The device step: a batch of segments in, per-segment :class:`SegmentOutput` out.

    The padded batch is built in pinned memory (CUDA) and copied asynchronously; the
    float16 cast, the per-segment sums over real frames (float32, on the device) and the
    finiteness check run on the device, so only float16 frames and a few sums come back.
    Benchmarks and tests replace this object to stand in for a device.
    """

    def __init__(
        self,
        model: EmotionBackbone,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        *,
        identity: BackboneIdentity | None = None,
    ) -> None:
        self.model = model
        self.device = torch.device(device)
        self.dtype = dtype
        self.identity = identity  # what the features' spec records

    @property
    def allow_padding(self) -> bool:
        """Whether segments of different lengths may share a batch (layer norm)."""
        return self.model.uses_layer_norm

    def __call__(self, rows: list[np.ndarray], frames: list[int]) -> list[SegmentOutput]:
        """Encode ``rows`` (normalised 16 kHz float32 audio) of ``frames`` frames each."""
        cuda = self.device.type == "cuda"
        longest = max(len(r) for r in rows)
        host = torch.zeros((len(rows), longest), dtype=torch.float32, pin_memory=cuda)
        staging = host.numpy()
        for index, row in enumerate(rows):
            staging[index, : len(row)] = row
        inputs = host.to(self.device, non_blocking=True)
        attention = None
        if any(len(r) != longest for r in rows):
            lengths = torch.tensor([len(r) for r in rows]).to(self.device, non_blocking=True)
            positions = torch.arange(longest, device=self.device)
            attention = (positions[None, :] < lengths[:, None]).long()
        autocast = self.dtype != torch.float32
        with (
            torch.inference_mode(),
            torch.autocast(device_type=self.device.type, dtype=self.dtype, enabled=autocast),
        ):
            hidden, frame_vad = self.model(inputs, attention_mask=attention)
            hidden, frame_vad = hidden.float(), frame_vad.float()
            hidden16 = hidden.to(torch.float16)
            finite = torch.isfinite(hidden16).all(dim=2) & torch.isfinite(frame_vad).all(dim=2)
            if all(n == hidden.shape[1] for n in frames):
                hidden_sum, vad_sum = hidden.sum(dim=1), frame_vad.sum(dim=1)
                finite = finite.all(dim=1)
            else:  # padded rows: only real frames count
                counts = torch.tensor(frames).to(self.device, non_blocking=True)
                real = torch.arange(hidden.shape[1], device=self.device)[None] < counts[:, None]
                hidden_sum = (hidden * real[..., None]).sum(dim=1)
                vad_sum = (frame_vad * real[..., None]).sum(dim=1)
                finite = (finite | ~real).all(dim=1)
            back = [
                t.to("cpu", non_blocking=cuda)
                for t in (hidden16, frame_vad, hidden_sum, vad_sum, finite)
            ]
        if cuda:
            torch.cuda.current_stream(self.device).synchronize()
        hidden16, frame_vad, hidden_sum, vad_sum, finite = (t.numpy() for t in back)
        return [
            SegmentOutput(
                hidden=hidden16[row, :n],
                frame_vad=frame_vad[row, :n],
                hidden_sum=hidden_sum[row],
                vad_sum=vad_sum[row],
                finite=bool(finite[row]),
            )
            for row, n in enumerate(frames)
        ]

    def clip_vad(self, hidden_means: np.ndarray) -> np.ndarray:
        """The head on clip means: ``(clips, hidden)`` float32 -> ``(clips, 3)`` float32."""
        head = self.model.classifier
        head_dtype = next(head.parameters()).dtype
        with torch.inference_mode():
            pooled = torch.from_numpy(hidden_means).to(device=self.device, dtype=head_dtype)
            return head(pooled).float().cpu().numpy()


def _run_batch(
    encoder: BatchEncoder, audio: list[np.ndarray], batch: list[Segment]
) -> list[SegmentOutput]:
    rows = [audio[s.clip][s.sample_start : s.sample_end] for s in batch]
    return encoder(rows, [s.frames for s in batch])


def _run_alone(
    encoder: BatchEncoder, audio: list[np.ndarray], seg: Segment
) -> SegmentOutput | Exception:
    try:
        return _run_batch(encoder, audio, [seg])[0]
    except Exception as err:
        return err


def encode_segments(
    encoder: BatchEncoder,
    audio: list[np.ndarray],
    segments: list[Segment],
    *,
    batch_seconds: float,
) -> Iterator[tuple[Segment, SegmentOutput | Exception]]:
    """Yield ``(segment, output)`` per segment, or ``(segment, error)``."""
    for batch in plan_batches(
        segments, batch_seconds=batch_seconds, allow_padding=encoder.allow_padding
    ):
        try:
            outputs: list = _run_batch(encoder, audio, batch)
        except Exception as err:  # retry alone: one bad or huge segment must not sink the batch
            outputs = [err] if len(batch) == 1 else [_run_alone(encoder, audio, s) for s in batch]
        yield from zip(batch, outputs, strict=True)


def encode_clips(
    model: EmotionBackbone | BatchEncoder,
    audio: list[np.ndarray],
    *,
    batch_seconds: float,
    window_seconds: float | None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> list[ClipFeatures | Exception]:
    """Encode normalised 16 kHz clips; one ``ClipFeatures`` or the error per clip.

    ``model`` is a backbone (run on ``device`` in ``dtype``) or a ready
    :class:`BatchEncoder` (or a stand-in with its interface). Frame outputs are kept at
    storage precision (float16 hidden
    states); the means come from the float32 states, summed in float32 on the device per
    segment and in float64 across a clip's segments (relative error about 1e-7, far
    below float16's 2**-11).
    """
    encoder = BatchEncoder(model, device, dtype) if isinstance(model, torch.nn.Module) else model
    segments = [
        seg
        for index, samples in enumerate(audio)
        for seg in plan_segments(index, len(samples), window_seconds=window_seconds)
    ]
    pieces: list[dict[int, SegmentOutput]] = [{} for _ in audio]
    errors: dict[int, str] = {}
    for seg, out in encode_segments(encoder, audio, segments, batch_seconds=batch_seconds):
        if isinstance(out, Exception):
            errors.setdefault(seg.clip, f"backbone forward failed: {out}")
        elif not out.finite:
            errors.setdefault(seg.clip, "backbone produced non-finite features (float16 overflow?)")
        else:
            pieces[seg.clip][seg.first_frame] = out
    assembled: dict[int, tuple] = {}
    for index in range(len(audio)):
        if index in errors:
            continue
        if not pieces[index]:
            errors[index] = "no frames (clip shorter than one frame)"
            continue
        ordered = [pieces[index][k] for k in sorted(pieces[index])]
        pieces[index] = {}
        assembled[index] = _join(ordered)
    clip_vad = (
        encoder.clip_vad(np.stack([joined[2] for joined in assembled.values()]))
        if assembled
        else None
    )
    vad_rows = dict(zip(assembled, clip_vad if clip_vad is not None else [], strict=True))
    results: list[ClipFeatures | Exception] = []
    for index in range(len(audio)):
        if index in errors:
            results.append(RuntimeError(errors[index]))
            continue
        hidden, frame_vad, hidden_mean, vad_mean = assembled[index]
        results.append(
            ClipFeatures(
                hidden=hidden,
                frame_vad=frame_vad,
                hidden_mean=hidden_mean,
                vad_mean=vad_mean,
                clip_vad=vad_rows[index].astype(np.float32),
            )
        )
    return results


def _join(ordered: list[SegmentOutput]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One clip's segments, in frame order -> (hidden, frame_vad, hidden_mean, vad_mean)."""
    if len(ordered) == 1:  # no copy: views into the batch the device returned
        hidden, frame_vad = ordered[0].hidden, ordered[0].frame_vad
    else:
        hidden = np.concatenate([o.hidden for o in ordered])
        frame_vad = np.concatenate([o.frame_vad for o in ordered])
    frames = len(hidden)
    hidden_sum = np.sum([o.hidden_sum for o in ordered], axis=0, dtype=np.float64)
    vad_sum = np.sum([o.vad_sum for o in ordered], axis=0, dtype=np.float64)
    return (
        hidden,
        frame_vad,
        (hidden_sum / frames).astype(np.float32),
        (vad_sum / frames).astype(np.float32),
    )
