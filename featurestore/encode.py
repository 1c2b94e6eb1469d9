"""Running a backbone over decoded clips: windows, batches, per-clip features.

Rules (docs/extracting.md, "How features are computed", says why):

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

import contextlib
import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from featurestore.backbone import BackboneIdentity, EmotionBackbone
from featurestore.frames import (
    FRAME_HOP_SAMPLES,
    FRAME_WINDOW_SAMPLES,
    FRAMES_PER_SECOND,
    frames_for_samples,
)
from featurestore.spec import layer_key
from featurestore.store.clip import ClipFeatures


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
    layers: np.ndarray | None = None  # (other layers, frames, hidden) float16
    layer_sums: np.ndarray | None = None  # (other layers, hidden) float32


@dataclass
class Launched:
    """A batch queued on the device: the host tensors its outputs arrive in, and the
    event that says they have (None on a CPU, where the work is already done)."""

    frames: list[int]
    outputs: list[torch.Tensor]
    done: object | None
    keep: tuple  # host and device inputs, alive until the copies are done


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
        layers: tuple[int, ...] = (),
    ) -> None:
        self.model = model
        self.device = torch.device(device)
        self.dtype = dtype
        self.identity = identity  # what the features' spec records
        self.layers = tuple(layers)  # stored besides the last hidden state (spec.layers)
        self.frames_computed = 0  # frames the backbone ran, padding included

    @property
    def allow_padding(self) -> bool:
        """Whether segments of different lengths may share a batch (layer norm)."""
        return self.model.uses_layer_norm

    def launch(self, rows: list[np.ndarray], frames: list[int]) -> Launched:
        """Start encoding ``rows`` (normalised 16 kHz float32 audio) of ``frames`` frames
        each. On a GPU this returns once the work is queued (the host batch is staged in
        pinned memory, copies are asynchronous), so the next batch can be staged while
        this one runs; :meth:`collect` waits for it."""
        cuda = self.device.type == "cuda"
        longest = max(len(r) for r in rows)
        host = torch.empty((len(rows), longest), dtype=torch.float32, pin_memory=cuda)
        staging = host.numpy()
        for index, row in enumerate(rows):
            staging[index, : len(row)] = row
            staging[index, len(row) :] = 0.0
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
            if self.layers:
                hidden, frame_vad, others = self.model(
                    inputs, attention_mask=attention, layers=self.layers
                )
            else:
                (hidden, frame_vad), others = self.model(inputs, attention_mask=attention), []
            self.frames_computed += hidden.shape[0] * hidden.shape[1]
            padded = any(n != hidden.shape[1] for n in frames)
            real = None
            if padded:  # only real frames count in sums and checks
                counts = torch.tensor(frames).to(self.device, non_blocking=True)
                real = torch.arange(hidden.shape[1], device=self.device)[None] < counts[:, None]
            hidden16, hidden_sum, finite = _frames_out(hidden, real)
            frame_vad = frame_vad.float()
            vad_finite = torch.isfinite(frame_vad).all(dim=2)
            finite &= (vad_finite | ~real).all(dim=1) if padded else vad_finite.all(dim=1)
            vad_sum = _frame_sum(frame_vad, real)
            results = [hidden16, frame_vad, hidden_sum, vad_sum, finite]
            if others:
                layer_outs = [_frames_out(states, real) for states in others]
                results.append(torch.stack([o[0] for o in layer_outs], dim=1))
                results.append(torch.stack([o[1] for o in layer_outs], dim=1))
                results[4] = finite & torch.stack([o[2] for o in layer_outs]).all(dim=0)
            if cuda:  # into pinned host memory, asynchronously; done when the event is
                back = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in results]
                for target, source in zip(back, results, strict=True):
                    target.copy_(source, non_blocking=True)
                done = torch.cuda.Event(blocking=True)  # waiting sleeps, not spins
                done.record(torch.cuda.current_stream(self.device))
            else:
                back, done = list(results), None
        return Launched(frames=list(frames), outputs=back, done=done, keep=(host, inputs))

    def collect(self, launched: Launched) -> list[SegmentOutput]:
        """Wait for a launched batch; its per-segment outputs (views of one host copy)."""
        if launched.done is not None:
            launched.done.synchronize()
        hidden16, frame_vad, hidden_sum, vad_sum, finite, *others = (
            t.numpy() for t in launched.outputs
        )
        layers, layer_sums = others or (None, None)
        return [
            SegmentOutput(
                hidden=hidden16[row, :n],
                frame_vad=frame_vad[row, :n],
                hidden_sum=hidden_sum[row],
                vad_sum=vad_sum[row],
                finite=bool(finite[row]),
                layers=None if layers is None else layers[row, :, :n],
                layer_sums=None if layer_sums is None else layer_sums[row],
            )
            for row, n in enumerate(launched.frames)
        ]

    def __call__(self, rows: list[np.ndarray], frames: list[int]) -> list[SegmentOutput]:
        """Encode ``rows`` and wait for them: :meth:`launch` then :meth:`collect`."""
        return self.collect(self.launch(rows, frames))

    def clip_vad(self, hidden_means: np.ndarray) -> np.ndarray:
        """The head on clip means: ``(clips, hidden)`` float32 -> ``(clips, 3)`` float32.

        On a GPU it runs on a stream of its own, so it does not wait for the batches
        the device thread has queued."""
        head = self.model.classifier
        if head is None:  # a backbone without a VAD head
            return np.zeros((len(hidden_means), 0), dtype=np.float32)
        head_dtype = next(head.parameters()).dtype
        side = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        with torch.inference_mode(), torch.cuda.stream(side) if side else contextlib.nullcontext():
            pooled = torch.from_numpy(hidden_means).to(device=self.device, dtype=head_dtype)
            return head(pooled).float().cpu().numpy()


def _frame_sum(values: torch.Tensor, real: torch.Tensor | None) -> torch.Tensor:
    """``(batch, frames, width)`` -> ``(batch, width)`` float32 sums over real frames
    (``real``: ``(batch, frames)`` bool, None where no row is padded)."""
    if real is None:
        return values.sum(dim=1)
    # where, not a product: an inf in a padded frame would make NaN
    return torch.where(real[..., None], values, 0.0).sum(dim=1)


def _frames_out(
    states: torch.Tensor, real: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One layer's ``(batch, frames, hidden)`` states -> their float16 values, float32
    sums over real frames, and whether every real frame is finite in float16."""
    states = states.float()
    states16 = states.to(torch.float16)
    finite = torch.isfinite(states16).all(dim=2)
    finite = (finite | ~real).all(dim=1) if real is not None else finite.all(dim=1)
    return states16, _frame_sum(states, real), finite


def _launch(
    encoder: BatchEncoder, audio: list[np.ndarray], batch: list[Segment]
) -> Launched | Exception:
    rows = [audio[s.clip][s.sample_start : s.sample_end] for s in batch]
    try:
        return encoder.launch(rows, [s.frames for s in batch])
    except Exception as err:
        return err


def _collect(
    encoder: BatchEncoder, audio: list[np.ndarray], batch: list[Segment], launched
) -> list[SegmentOutput | Exception]:
    """A launched batch's outputs; a batch that failed is retried one segment at a time
    (one bad or huge segment must not sink the batch)."""
    try:
        if isinstance(launched, Exception):
            raise launched
        return encoder.collect(launched)
    except Exception as err:
        if len(batch) == 1:
            return [err]
        return [_alone(encoder, audio, seg) for seg in batch]


def _alone(encoder: BatchEncoder, audio: list[np.ndarray], seg: Segment):
    return _collect(encoder, audio, [seg], _launch(encoder, audio, [seg]))[0]


def encode_rounds(
    encoder: BatchEncoder,
    rounds: Iterator[tuple[object, list[np.ndarray], list[Segment]]],
    *,
    batch_seconds: float,
) -> Iterator[tuple[object, list[tuple[Segment, SegmentOutput | Exception]]]]:
    """For each ``(payload, audio, segments)`` round, in order, yield ``(payload,
    [(segment, output or error), ...])``.

    One batch is in flight while the next is staged, across rounds too: batch k+1 is
    launched before batch k is collected, so on a GPU the host's work (staging, the
    next round's planning) overlaps the device's.
    """
    waiting: deque[list] = deque()  # [payload, outputs, batches left], in round order
    pending = None  # (round entry, audio, batch, launched)

    def finish(entry, audio, batch, launched) -> None:
        entry[1].extend(zip(batch, _collect(encoder, audio, batch, launched), strict=True))
        entry[2] -= 1

    for payload, audio, segments in rounds:
        batches = plan_batches(
            segments, batch_seconds=batch_seconds, allow_padding=encoder.allow_padding
        )
        entry = [payload, [], len(batches)]
        waiting.append(entry)
        for batch in batches:
            launched = _launch(encoder, audio, batch)
            if pending is not None:
                finish(*pending)
            pending = (entry, audio, batch, launched)
            while waiting and waiting[0][2] == 0:
                done = waiting.popleft()
                yield done[0], done[1]
    if pending is not None:
        finish(*pending)
    while waiting:
        done = waiting.popleft()
        yield done[0], done[1]


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
    storage precision (float16 hidden states); the means come from the float32 states,
    summed in float32 on the device per segment and in float64 across a clip's segments
    (relative error about 1e-7, far below float16's 2**-11).
    """
    encoder = BatchEncoder(model, device, dtype) if isinstance(model, torch.nn.Module) else model
    segments = segments_of(audio, window_seconds=window_seconds)
    [(_, outputs)] = encode_rounds(
        encoder, iter([(None, audio, segments)]), batch_seconds=batch_seconds
    )
    return assemble_clips(encoder, len(audio), outputs)


def segments_of(audio: list[np.ndarray], *, window_seconds: float | None) -> list[Segment]:
    """Every window of every clip (clip index = position in ``audio``)."""
    return [
        seg
        for index, samples in enumerate(audio)
        for seg in plan_segments(index, len(samples), window_seconds=window_seconds)
    ]


def assemble_clips(
    encoder: BatchEncoder,
    clips: int,
    outputs: list[tuple[Segment, SegmentOutput | Exception]],
) -> list[ClipFeatures | Exception]:
    """The host's half of :func:`encode_clips`: per clip, its segments joined in frame
    order, its means, and the head on its mean (``clip_vad``); or why it failed."""
    pieces: list[dict[int, SegmentOutput]] = [{} for _ in range(clips)]
    errors: dict[int, str] = {}
    for seg, out in outputs:
        if isinstance(out, Exception):
            errors.setdefault(seg.clip, f"backbone forward failed: {out}")
        elif not out.finite:
            errors.setdefault(seg.clip, "backbone produced non-finite features (float16 overflow?)")
        else:
            pieces[seg.clip][seg.first_frame] = out
    assembled: dict[int, tuple] = {}
    for index in range(clips):
        if index in errors:
            continue
        if not pieces[index]:
            errors[index] = "no frames (clip shorter than one frame)"
            continue
        assembled[index] = _join(
            [pieces[index][k] for k in sorted(pieces[index])], getattr(encoder, "layers", ())
        )
    clip_vad = (
        encoder.clip_vad(np.stack([joined[2] for joined in assembled.values()]))
        if assembled
        else []
    )
    vad_rows = dict(zip(assembled, clip_vad, strict=True))
    results: list[ClipFeatures | Exception] = []
    for index in range(clips):
        if index in errors:
            results.append(RuntimeError(errors[index]))
            continue
        hidden, frame_vad, hidden_mean, vad_mean, layers = assembled[index]
        results.append(
            ClipFeatures(
                hidden=hidden,
                frame_vad=frame_vad,
                hidden_mean=hidden_mean,
                vad_mean=vad_mean,
                clip_vad=np.asarray(vad_rows[index], dtype=np.float32),
                layers=layers,
            )
        )
    return results


def _join(ordered: list[SegmentOutput], layers: tuple[int, ...] = ()) -> tuple:
    """One clip's segments, in frame order -> (hidden, frame_vad, hidden_mean, vad_mean,
    {array name: values} of the other ``layers``)."""

    def frames_of(values: list[np.ndarray], axis: int = 0) -> np.ndarray:
        # One segment: no copy, views into the batch the device returned.
        return values[0] if len(values) == 1 else np.concatenate(values, axis=axis)

    def mean_of(sums: list[np.ndarray], frames: int) -> np.ndarray:
        return (np.sum(sums, axis=0, dtype=np.float64) / frames).astype(np.float32)

    hidden = frames_of([o.hidden for o in ordered])
    frame_vad = frames_of([o.frame_vad for o in ordered])
    frames = len(hidden)
    others = {}
    if layers:
        states = frames_of([o.layers for o in ordered], axis=1)  # (layers, frames, hidden)
        means = mean_of([o.layer_sums for o in ordered], frames)  # (layers, hidden)
        for i, k in enumerate(layers):
            others[layer_key("hidden", k)] = states[i]
            others[layer_key("hidden_mean", k)] = means[i]
    return (
        hidden,
        frame_vad,
        mean_of([o.hidden_sum for o in ordered], frames),
        mean_of([o.vad_sum for o in ordered], frames),
        others,
    )
