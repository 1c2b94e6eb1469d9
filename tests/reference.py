"""The reference the extractor is held to: plain, unbatched transformers forward.

Independent of emi's code paths: the transformers feature extractor normalises,
``Wav2Vec2Model.from_pretrained`` loads the encoder, and the checkpoint's
``classifier.*`` tensors are applied by hand.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from transformers import AutoModel, Wav2Vec2FeatureExtractor


class ReferenceForward:
    """``AutoModel.from_pretrained`` (Wav2Vec2Model, HubertModel or WavLMModel by the
    config's model_type) with the plain ``eager`` attention (emi runs the fused
    ``sdpa`` where the family has it, so every comparison checks that too); the VAD head
    by hand where the checkpoint has one."""

    def __init__(self, checkpoint: str | Path, *, attention: str = "eager") -> None:
        self.encoder = AutoModel.from_pretrained(
            str(checkpoint), attn_implementation=attention
        ).eval()
        assert self.encoder.config._attn_implementation == attention
        state = load_file(str(Path(checkpoint) / "model.safetensors"))
        self.head = {
            k[len("classifier.") :]: v for k, v in state.items() if k.startswith("classifier.")
        }
        self.processor = Wav2Vec2FeatureExtractor(
            feature_size=1, sampling_rate=16_000, do_normalize=True, return_attention_mask=True
        )

    def apply_head(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(x @ self.head["dense.weight"].T + self.head["dense.bias"])
        return h @ self.head["out_proj.weight"].T + self.head["out_proj.bias"]

    @torch.inference_mode()
    def __call__(self, audio_16k: np.ndarray, *, normalised: bool = False) -> dict:
        """Features of one clip: hidden, frame_vad, hidden_mean, vad_mean, clip_vad,
        and ``layers``: every ``hidden_states[k]`` (k = 0 .. last)."""
        if normalised:
            values = torch.from_numpy(np.asarray(audio_16k, dtype=np.float32))[None]
        else:
            values = self.processor(
                audio_16k, sampling_rate=16_000, return_tensors="pt"
            ).input_values
        out = self.encoder(values, output_hidden_states=True)
        hidden = out.last_hidden_state[0]
        features = {
            "layers": [states[0].numpy() for states in out.hidden_states],
            "hidden": hidden.numpy(),
            "hidden_mean": hidden.mean(0).numpy(),
        }
        if self.head:
            frame_vad = self.apply_head(hidden)
            features["frame_vad"] = frame_vad.numpy()
            features["vad_mean"] = frame_vad.mean(0).numpy()
            features["clip_vad"] = self.apply_head(hidden.mean(0)).numpy()
        return features


def assert_matches(store, clip_id: str, ref: dict) -> None:
    """Stored features equal the reference within float16 storage error."""
    hidden = store.hidden(clip_id).astype(np.float32)
    assert hidden.shape == ref["hidden"].shape, clip_id
    # float16 keeps 11 significant bits: relative error <= 2**-11 of each value.
    np.testing.assert_allclose(hidden, ref["hidden"], rtol=2**-10, atol=1e-4, err_msg=clip_id)
    np.testing.assert_allclose(store.hidden_mean(clip_id), ref["hidden_mean"], atol=1e-4)
    if "frame_vad" not in ref:  # a backbone without the VAD head: nor has the store
        assert not store.spec.vad_labels and "frame_vad" not in store.arrays
        return
    np.testing.assert_allclose(
        store.frame_vad(clip_id), ref["frame_vad"], atol=1e-4, err_msg=clip_id
    )
    for key in ("vad_mean", "clip_vad"):
        np.testing.assert_allclose(
            getattr(store, key)(clip_id), ref[key], atol=1e-4, err_msg=f"{clip_id} {key}"
        )


def assert_same_features(a, b) -> None:
    """Two stores hold the same clips and features, within float16 rounding (runs that
    batched or threaded differently may round a value one float16 step apart)."""
    assert a.fingerprint == b.fingerprint
    assert sorted(a.clip_ids) == sorted(b.clip_ids)
    for clip_id in a.clip_ids:
        np.testing.assert_allclose(
            a.hidden(clip_id).astype(np.float32),
            b.hidden(clip_id).astype(np.float32),
            rtol=2**-9,
            atol=1e-4,
            err_msg=clip_id,
        )
        np.testing.assert_allclose(a.clip_vad(clip_id), b.clip_vad(clip_id), atol=1e-5)
