"""Fused layers: K members' copies of one layer as one operator (HFTA's horizontal fusion).

Activation layouts (K members, N examples per member):

- *feature layout* ``(K, F, N)``, examples innermost: linear layers, one batched matmul
  (``baddbmm``, W·x) for all members. Autograd then forms each weight gradient as g·xᵀ directly
  in the weight's (K, O, F) layout, and the loss and ReLU read the examples along the contiguous
  dimension; the (K, N, F) layout (x·Wᵀ) makes the gradient of a narrow layer (the classifier)
  several times slower on CPU and torch's log-softmax over a few classes ten times slower;
- *channel layout* ``(N, K·C, H, W)``, member-major channels: convolutions become one convolution
  with ``groups = K·groups`` (on a CPU: in channels-last memory for narrow models, else each
  member's own convolution, see :class:`FusedConv2d`), batch norm one ``batch_norm`` over K·C channels, which normalises
  each member's channels over that member's own examples only, exactly per-member batch norm,
  running statistics included; ReLU and pooling act per channel and need no change.

Why these operators rather than torch.func (``stack_module_state`` + ``vmap`` of
``functional_call``): each fused layer here is one ordinary torch operator with ordinary autograd,
on every device, and batch norm in training mode needs nothing special (under ``vmap`` its
in-place running-statistics update is not allowed, and torch.func's workaround drops the running
statistics, which eval-mode test losses need). The fused forms are also what HFTA measured.

Every parameter and buffer is stored with the member axis first, ``(K, *solo_shape)``, so member
k's slice ``p[k]`` is a contiguous tensor of the solo shape (the array trains through such
views), and the array size is read from the tensors at every call: dropping members (see
:meth:`FusedModule.keep`) is only a matter of slicing them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FusedLinear", "FusedConv2d", "FusedBatchNorm2d", "FusedFlatten", "stack"]


def stack(tensors: list[Tensor]) -> Tensor:
    return torch.stack([t.detach() for t in tensors]).contiguous()


class FusedLinear(nn.Module):
    """K ``nn.Linear`` layers: (K, F, N) or channel-layout (N, K·F) in, (K, O, N) out."""

    def __init__(self, solos: list[nn.Linear]):
        super().__init__()
        self.weight = nn.Parameter(stack([m.weight for m in solos]))  # (K, O, F)
        self.bias = nn.Parameter(stack([m.bias for m in solos])) if solos[0].bias is not None else None

    def forward(self, x: Tensor) -> Tensor:
        k = self.weight.shape[0]
        if x.dim() == 2:  # (N, K·F) from a flattened channel layout: member-major features
            x = x.view(x.shape[0], k, -1).permute(1, 2, 0)
        if self.bias is None:
            return torch.bmm(self.weight, x)
        return torch.baddbmm(self.bias.unsqueeze(2), self.weight, x)


class FusedConv2d(nn.Module):
    """K ``nn.Conv2d`` layers over channel layout (N, K·C, H, W).

    On a GPU, and on a CPU for an input in channels-last memory, one grouped convolution
    (``groups = K·groups``). On a CPU torch's grouped convolution over contiguous (N, C, H, W) memory
    takes 1.2-2x the time of the K members' own convolutions; in channels-last memory it is faster
    than they are for narrow layers (LeNet-5's, 6-16 channels) but slower for wide ones (ResNet's,
    64-512; unfold + bmm is slower than either): so a fused model with narrow convolutions runs
    channels-last on a CPU (:class:`~sensitivity.fused.models.FusedModel`), and a contiguous input
    here means each member runs its own convolution on its slice of the channels
    (benchmarks/fused_conv.py and fused_throughput.py; README: Performance).
    """

    def __init__(self, solos: list[nn.Conv2d]):
        super().__init__()
        m = solos[0]
        if m.padding_mode != "zeros":
            raise ValueError(f"FusedConv2d: padding_mode {m.padding_mode!r} is not supported")
        self.stride, self.padding, self.dilation, self.groups = m.stride, m.padding, m.dilation, m.groups
        self.weight = nn.Parameter(stack([s.weight for s in solos]))  # (K, O, C/g, kh, kw)
        self.bias = nn.Parameter(stack([s.bias for s in solos])) if m.bias is not None else None

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type == "cpu" and not x.is_contiguous(memory_format=torch.channels_last):
            return self.per_member(x)
        return self.grouped(x)

    def grouped(self, x: Tensor) -> Tensor:
        k = self.weight.shape[0]
        w = self.weight.reshape(-1, *self.weight.shape[2:])
        b = None if self.bias is None else self.bias.reshape(-1)
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups * k)

    def per_member(self, x: Tensor) -> Tensor:
        # unbind, not w[k]: its backward stacks the K gradients once, where K indexings would each add
        # a zero-filled gradient of the whole fused weight
        k = self.weight.shape[0]
        biases = [None] * k if self.bias is None else self.bias.unbind(0)
        return torch.cat([F.conv2d(xk, wk, bk, self.stride, self.padding, self.dilation, self.groups)
                          for xk, wk, bk in zip(x.chunk(k, 1), self.weight.unbind(0), biases)], 1)


class FusedBatchNorm2d(nn.Module):
    """K ``nn.BatchNorm2d`` layers as one batch norm over K·C channels (per-member statistics)."""

    def __init__(self, solos: list[nn.BatchNorm2d]):
        super().__init__()
        m = solos[0]
        if not (m.affine and m.track_running_stats) or m.momentum is None:
            raise ValueError("FusedBatchNorm2d: needs affine, tracked running statistics and a momentum")
        self.eps, self.momentum = m.eps, m.momentum
        self.weight = nn.Parameter(stack([s.weight for s in solos]))
        self.bias = nn.Parameter(stack([s.bias for s in solos]))
        self.register_buffer("running_mean", stack([s.running_mean for s in solos]))
        self.register_buffer("running_var", stack([s.running_var for s in solos]))

    def forward(self, x: Tensor) -> Tensor:
        # views of the (K, C) buffers: batch_norm updates them in place
        return F.batch_norm(x, self.running_mean.view(-1), self.running_var.view(-1), self.weight.view(-1),
                            self.bias.view(-1), self.training, self.momentum, self.eps)


class FusedFlatten(nn.Module):
    """``nn.Flatten`` into the feature layout: (K, N, *shape) -> (K, F, N) (a view)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(2).transpose(1, 2)
