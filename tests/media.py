"""Test media: the same audio muxed into video and audio containers with PyAV."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np


def mux_audio(
    path: str | Path,
    audio: np.ndarray,
    rate: int,
    codec: str,
    *,
    video: bool = False,
) -> Path:
    """Write ``audio`` (``(frames, channels)`` int16) into a container chosen by the
    suffix of ``path``, encoded with ``codec``; ``video`` adds a short video stream
    first (so the audio is not the container's first stream)."""
    import av

    path = Path(path)
    channels = audio.shape[1]
    layout = {1: "mono", 2: "stereo"}[channels]
    with av.open(str(path), mode="w") as container:
        picture = _video_stream(container) if video else None
        stream = container.add_stream(codec, rate=rate, layout=layout)
        stream.time_base = Fraction(1, rate)
        encoder_format = stream.codec_context.format.name
        step = stream.codec_context.frame_size or 1024
        for start in range(0, len(audio), step):
            block = audio[start : start + step]
            frame = _frame(block, encoder_format, layout, rate)
            frame.pts = start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
        if picture is not None:
            _write_video(container, picture, len(audio) / rate)
    return path


def _video_stream(container):
    picture = container.add_stream("mpeg4", rate=10)
    picture.width, picture.height, picture.pix_fmt = 64, 48, "yuv420p"
    return picture


def _write_video(container, picture, seconds: float) -> None:
    """Ten small grey frames per second, their shade changing."""
    import av

    for index in range(int(10 * seconds)):
        image = np.full((48, 64, 3), (index * 7) % 255, dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = index
        for packet in picture.encode(frame):
            container.mux(packet)
    for packet in picture.encode(None):
        container.mux(packet)


def _frame(block: np.ndarray, encoder_format: str, layout: str, rate: int):
    import av

    planar = encoder_format.endswith("p")
    kind = encoder_format.rstrip("p")
    if kind == "s16":
        data = block.astype(np.int16)
    elif kind == "s32":
        data = block.astype(np.int32) << 16
    elif kind == "flt":
        data = block.astype(np.float32) / 32768.0
    else:
        raise ValueError(f"sample format {encoder_format} not handled by this helper")
    data = np.ascontiguousarray(data.T) if planar else data.reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(data, format=encoder_format, layout=layout)
    frame.sample_rate = rate
    return frame


def write_video_without_audio(path: str | Path, seconds: float = 1.0) -> Path:
    """An MP4 with one video stream and no audio."""
    import av

    path = Path(path)
    with av.open(str(path), mode="w") as container:
        _write_video(container, _video_stream(container), seconds)
    return path
