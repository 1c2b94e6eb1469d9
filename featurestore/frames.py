"""What one stored frame is: the backbone's input rate and its frame grid.

These numbers belong to the store (every spec records them, and a reader turns frames
into seconds with them); the audio decoder and the encoder read them from here.
"""

from __future__ import annotations

SAMPLE_RATE_HZ = 16_000
FRAME_HOP_SAMPLES = 320  # 20 ms: 50 frames per second
FRAME_WINDOW_SAMPLES = 400  # 25 ms: the conv stack's receptive field
FRAMES_PER_SECOND = SAMPLE_RATE_HZ // FRAME_HOP_SAMPLES  # 50


def frames_for_samples(samples: int) -> int:
    """Backbone frames for ``samples`` at 16 kHz: floor((L - 400) / 320) + 1, or 0."""
    if samples < FRAME_WINDOW_SAMPLES:
        return 0
    return (samples - FRAME_WINDOW_SAMPLES) // FRAME_HOP_SAMPLES + 1
