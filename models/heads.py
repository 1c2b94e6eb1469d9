"""Heads trained on frozen features: the paper's LSTM fusion head and a linear baseline.

Per-frame input is ``[hidden, frame_vad]`` (``hidden_size + 3``: 1027 for the real
backbone); the global mean vector is the mean of that per-frame vector over a clip's
real frames.

Presets (``input`` is the per-frame width of the store):

==============  =====================================================================
``paper``       LSTM 2 layers x ``input``; Linear(2 input, 2 input), tanh,
                Linear(2 input, targets). For a 1024-d backbone and 6 targets:
                21,125,396 parameters, exactly the paper's head.
``fusion``      the same architecture, trained by emi's recipe (``models.options``).
``compact``     LSTM 1 layer x 256; Linear(input + 256, 256), tanh, Linear(256, targets).
``mean-linear`` Linear(input, targets) on the global mean vector (the challenge's
                wav2vec2 + linear baseline), solved as ridge regression
                (:mod:`models.ridge`).
==============  =====================================================================

Layers: a head reads ``hidden`` (the last hidden state) by default, or one stored layer
(``layer``), or several (``layers``, e.g. every stored layer for ``layers: weighted``):
then a learned softmax weighting over them (SUPERB style) mixes the per-frame and mean
vectors into one ``hidden`` block before the head proper; the weights start equal. The
closed-form ``mean-linear`` head reads several layers side by side instead
(``mix: concat``): a linear map of all of them, of which any weighting is a special case.

Input scale: a head with ``standardize`` holds a per-dimension mean and standard
deviation of its input (computed from its training clips, :mod:`models.input_scale`) and
applies ``(x - mean) / std`` to the frames and the mean vector first; with
``layer_norm`` a layer weighting normalizes each layer's block (a layer norm without
learned parameters) before mixing, so that layers of different scales compete on their
content. Heads saved before these existed have neither and predict as they did.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class HeadConfig:
    """Architecture of a head; JSON-able (saved in the head's ``config.json``)."""

    head_type: str  # "fusion" | "mean-linear"
    input_dim: int  # per-frame width: hidden_size + 3
    num_targets: int
    lstm_hidden: int = 0
    lstm_layers: int = 0
    mlp_hidden: int = 0
    dropout: float = 0.0
    # The stored layers read, in order (None: ``hidden``); several are mixed by learned
    # softmax weights over blocks of ``layer_width`` (the store's hidden size).
    layers: tuple[int | None, ...] = (None,)
    layer_width: int = 0
    standardize: bool = False  # (x - mean) / std per input dimension, stored in the head
    layer_norm: bool = False  # a layer weighting normalizes each layer's block first
    mix: str = "softmax"  # several layers: "softmax" (learned weights) or "concat"

    def to_dict(self) -> dict:
        data = asdict(self)
        data["layers"] = list(self.layers)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> HeadConfig:
        values = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        if "layers" in values:
            values["layers"] = tuple(values["layers"])
        return cls(**values)

    @property
    def mixes_layers(self) -> bool:
        """Several layers mixed by learned softmax weights."""
        return len(self.layers) > 1 and self.mix == "softmax"

    @property
    def held_width(self) -> int:
        """Per-frame width of the input the head reads: ``input_dim`` plus one
        ``layer_width`` block for each further layer."""
        return self.input_dim + (len(self.layers) - 1) * self.layer_width


from models.errors import HeadError  # noqa: E402
from models.options import PRESET_RECORDS, PRESETS  # noqa: E402  (PRESETS re-exported)


def preset_config(
    name: str,
    *,
    input_dim: int,
    num_targets: int,
    layers: tuple[int | None, ...] = (None,),
    layer_width: int = 0,
    standardize: bool = False,
    **overrides,
) -> HeadConfig:
    """A preset's config for features of width ``input_dim`` (one layer's hidden size
    plus the VAD outputs); ``overrides`` change sizes; ``layers`` as in
    :class:`HeadConfig`. A layer weighting of unstandardized inputs normalizes each
    layer (``layer_norm``); a head type that mixes by concatenation reads layers side
    by side."""
    preset = PRESET_RECORDS.get(name)
    if preset is None:
        raise HeadError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    head_type = HEAD_TYPES[preset.head_type]
    sizes = {**preset.sizes(input_dim), **{k: v for k, v in overrides.items() if v is not None}}
    several = len(layers) > 1
    learned = head_type.several_layers == "softmax"
    return HeadConfig(
        head_type=head_type.name,
        input_dim=input_dim,
        num_targets=num_targets,
        layers=tuple(layers),
        layer_width=layer_width if several else 0,
        standardize=standardize,
        layer_norm=several and learned and not standardize,
        mix=head_type.several_layers if several else "softmax",
        **sizes,
    )


class Standardizer(nn.Module):
    """``(x - mean) / std`` per input dimension (the last axis); ``mean`` and ``std``
    are buffers, saved with the head's weights."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("std", torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def set(self, mean, std) -> None:
        """Set the statistics (``(width,)`` arrays)."""
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.std.copy_(torch.as_tensor(std, dtype=torch.float32))


class LayerMix(nn.Module):
    """A learned softmax weighting of ``layers`` blocks of ``width`` (SUPERB style):
    ``(..., layers x width + rest)`` -> ``(..., width + rest)``; ``rest`` (the VAD
    outputs) passes through. The weights start equal. With ``normalize`` each block is
    layer-normalized (no learned parameters) before the weighted sum."""

    def __init__(self, layers: int, width: int, normalize: bool = False) -> None:
        super().__init__()
        self.width = width
        self.normalize = normalize
        self.logits = nn.Parameter(torch.zeros(layers))

    def weights(self) -> torch.Tensor:
        """``(layers,)`` the softmax weights, summing to 1."""
        return torch.softmax(self.logits, dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        split = self.logits.numel() * self.width
        blocks = x[..., :split].unflatten(-1, (self.logits.numel(), self.width))
        if self.normalize:
            blocks = nn.functional.layer_norm(blocks, (self.width,))
        mixed = (blocks * self.weights().to(x.dtype)[:, None]).sum(dim=-2)
        return torch.cat([mixed, x[..., split:]], dim=-1)


def _mixer(config: HeadConfig) -> nn.Module | None:
    if not config.mixes_layers:
        return None
    return LayerMix(len(config.layers), config.layer_width, normalize=config.layer_norm)


def _standardizer(config: HeadConfig) -> nn.Module | None:
    return Standardizer(config.held_width) if config.standardize else None


class FusionHead(nn.Module):
    """LSTM over the per-frame sequence, fused with the global mean, then an MLP.

    Args:
        config: sizes; ``lstm_hidden`` and ``lstm_layers`` of the unidirectional LSTM,
            ``mlp_hidden`` of the first linear layer.
    """

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.config = config
        self.lstm = nn.LSTM(
            config.input_dim, config.lstm_hidden, num_layers=config.lstm_layers, batch_first=True
        )
        self.dropout = nn.Dropout(config.dropout)
        self.fc1 = nn.Linear(config.input_dim + config.lstm_hidden, config.mlp_hidden)
        self.fc2 = nn.Linear(config.mlp_hidden, config.num_targets)
        self.layer_mix = _mixer(config)
        self.standardizer = _standardizer(config)

    def forward(
        self, frames: torch.Tensor, lengths: torch.Tensor, mean: torch.Tensor
    ) -> torch.Tensor:
        """``frames (batch, time, width)`` padded, ``lengths (batch,)`` real frames (CPU
        int64), ``mean (batch, width)`` -> ``(batch, targets)``; ``width`` is
        ``input_dim``, plus one ``layer_width`` block per further mixed layer."""
        if self.standardizer is not None:
            frames, mean = self.standardizer(frames), self.standardizer(mean)
        if self.layer_mix is not None:
            frames, mean = self.layer_mix(frames), self.layer_mix(mean)
        # A unidirectional LSTM's output at step t depends on steps <= t only, so the
        # output at each clip's last real frame equals the packed-sequence result
        # (padding comes after it); the padded form runs the fused kernel, about 5x
        # faster to train on a CPU than packed sequences.
        outputs, _ = self.lstm(frames)
        rows = torch.arange(frames.shape[0], device=frames.device)
        last = outputs[rows, lengths.to(frames.device) - 1]
        x = torch.cat([mean, last], dim=1)
        x = torch.tanh(self.fc1(self.dropout(x)))
        return self.fc2(self.dropout(x))


class MeanLinear(nn.Module):
    """Linear regression on the global mean vector (solved in closed form by
    :mod:`models.ridge`; heads of earlier versions were trained by gradient descent)."""

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.config = config
        self.layer_mix = _mixer(config)
        width = config.input_dim if self.layer_mix is not None else config.held_width
        self.linear = nn.Linear(width, config.num_targets)
        self.standardizer = _standardizer(config)

    def forward(
        self, frames: torch.Tensor, lengths: torch.Tensor, mean: torch.Tensor
    ) -> torch.Tensor:
        if self.standardizer is not None:
            mean = self.standardizer(mean)
        if self.layer_mix is not None:
            mean = self.layer_mix(mean)
        return self.linear(mean)


@dataclass(frozen=True)
class HeadType:
    """One head architecture: its module, how it is fitted, and how it reads several
    layers. Adding a type is one record in :data:`HEAD_TYPES` (and a preset of it in
    ``models.options.PRESET_RECORDS``).

    Attributes:
        name: ``head_type`` in a head's ``config.json``.
        module: the ``nn.Module`` built from a :class:`HeadConfig`.
        closed_form: fitted in one pass over the training clips' mean vectors (ridge),
            not by gradient steps over epochs.
        several_layers: how it reads several layers: ``softmax`` (learned weights) or
            ``concat`` (side by side).
        sizes: the :class:`HeadConfig` sizes it needs (each a whole number >= 1).
    """

    name: str
    module: type[nn.Module]
    closed_form: bool
    several_layers: str
    sizes: tuple[str, ...] = ()


HEAD_TYPES: dict[str, HeadType] = {
    t.name: t
    for t in (
        HeadType(
            "fusion",
            FusionHead,
            closed_form=False,
            several_layers="softmax",
            sizes=("lstm_hidden", "lstm_layers", "mlp_hidden"),
        ),
        HeadType("mean-linear", MeanLinear, closed_form=True, several_layers="concat"),
    )
}


def head_type_of(config: HeadConfig) -> HeadType:
    """The record of ``config``'s head type.

    Raises:
        HeadError: a type emi does not know.
    """
    try:
        return HEAD_TYPES[config.head_type]
    except KeyError:
        raise HeadError(
            f"unknown head type {config.head_type!r}; known: {', '.join(HEAD_TYPES)}"
        ) from None


def build_head(config: HeadConfig) -> nn.Module:
    return head_type_of(config).module(config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def layer_weights(model: nn.Module) -> dict[str, float] | None:
    """A layer-mixing head's learned weights by layer (``"last"`` for ``hidden``);
    None for a head that reads one layer."""
    if getattr(model, "layer_mix", None) is None:
        return None
    weights = model.layer_mix.weights().detach().float().cpu().tolist()
    return {
        "last" if k is None else str(k): round(w, 6)
        for k, w in zip(model.config.layers, weights, strict=True)
    }
