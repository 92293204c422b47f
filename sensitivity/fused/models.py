"""A fused model: K members' solo models (same architecture) as one module of fused layers.

:func:`fuse` walks the first member's module tree and replaces every layer that holds
parameters by its fused form (``layers.py``), built from the K members' own layers, so each
member starts from exactly the weights its solo run starts from. Containers and
parameter-free layers (ReLU, pooling, Flatten in a convolutional model, torchvision's ResNet
and its blocks, whose ``forward`` only composes submodules) are kept as they are: they act
the same on the fused layouts. Any other layer with parameters or buffers raises ValueError.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from .layers import FusedBatchNorm2d, FusedConv2d, FusedFlatten, FusedLinear

__all__ = ["FusedModel", "fuse", "NARROW_CHANNELS"]

NARROW_CHANNELS = 32  # a model whose convolutions all have at most this many output channels runs channels-last on a CPU

_FUSED = {nn.Linear: FusedLinear, nn.Conv2d: FusedConv2d, nn.BatchNorm2d: FusedBatchNorm2d}


class FusedModel(nn.Module):
    """``forward(xs)`` maps the members' inputs (K, N, *shape) to their logits (K, N, classes).

    With `channels_last`, a CPU input in channel layout is put in channels-last memory, where the
    grouped convolutions of narrow layers are fastest (see :class:`~sensitivity.fused.layers.FusedConv2d`).
    """

    def __init__(self, body: nn.Module, channel_layout: bool, channels_last: bool = False):
        super().__init__()
        self.body = body
        self.channel_layout = channel_layout
        self.channels_last = channels_last

    @property
    def size(self) -> int:
        return next(self.parameters()).shape[0]

    def forward(self, xs: Tensor) -> Tensor:
        if self.channel_layout:  # (K, N, C, H, W) -> (N, K·C, H, W), member-major channels
            k, n = xs.shape[:2]
            xs = xs.transpose(0, 1).reshape(n, k * xs.shape[2], *xs.shape[3:])
            if self.channels_last and xs.device.type == "cpu":
                xs = xs.contiguous(memory_format=torch.channels_last)
        return self.body(xs).transpose(1, 2)  # (K, classes, N) -> (K, N, classes), a view

    def member_parameters(self, k: int) -> list[tuple[str, Tensor]]:
        """Member k's parameters as (solo name, view into the fused tensor) pairs."""
        return [(name.removeprefix("body."), p.data[k]) for name, p in self.named_parameters()]

    def member_state(self, k: int) -> dict[str, Tensor]:
        """Member k's solo ``state_dict`` (copies)."""
        return {name.removeprefix("body."): t[k].clone() for name, t in self.state_dict().items()}

    @torch.no_grad()
    def load_member_state(self, k: int, state: dict[str, Tensor]) -> None:
        """Set member k's slice of every tensor from its solo ``state_dict`` (as :meth:`member_state` gives it)."""
        for name, t in self.state_dict().items():
            t[k].copy_(state[name.removeprefix("body.")])

    def keep(self, index: list[int]) -> None:
        """Keep only the members at `index` (in that order); every tensor is sliced along the member axis."""
        idx = torch.as_tensor(index, dtype=torch.long, device=next(self.parameters()).device)
        with torch.no_grad():
            for module in self.modules():
                # new Parameter objects: autograd caches a leaf's shape, so .data cannot shrink in place
                for name, p in list(module.named_parameters(recurse=False)):
                    setattr(module, name, nn.Parameter(p.data.index_select(0, idx)))
                for name, buf in module.named_buffers(recurse=False):
                    setattr(module, name, buf.index_select(0, idx))


def fuse(solos: list[nn.Module]) -> FusedModel:
    """The K models in `solos` (same architecture, any weights) as one FusedModel."""
    if not solos:
        raise ValueError("fuse: no models")
    first = solos[0]
    modules = [dict(m.named_modules()) for m in solos]
    if any(d.keys() != modules[0].keys() for d in modules):
        raise ValueError("fuse: the models differ in structure")
    convs = [m for m in first.modules() if isinstance(m, nn.Conv2d)]
    channel_layout = bool(convs)
    body = copy.deepcopy(first)
    for name, module in first.named_modules():
        kind = type(module)
        if kind in _FUSED:
            fused = _FUSED[kind]([d[name] for d in modules])
        elif kind is nn.Flatten and not channel_layout:
            if module.start_dim != 1 or module.end_dim != -1:
                raise ValueError(f"fuse: {name}: only nn.Flatten() over all input dimensions is supported")
            fused = FusedFlatten()
        else:
            if any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False)):
                raise ValueError(f"fuse: layer {name} ({kind.__name__}) has no fused form")
            continue
        if name == "":
            raise ValueError(f"fuse: the model itself is a {kind.__name__}; wrap it in a container")
        body.set_submodule(name, fused)
    return FusedModel(body, channel_layout, channel_layout and max(m.out_channels for m in convs) <= NARROW_CHANNELS)
