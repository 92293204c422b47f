"""FusedConv2d's forms, one grouped convolution (GPUs; CPUs in channels-last memory) and each member's
own (CPUs otherwise), equal the members' solo convolutions and their gradients in float64; a fused
model of narrow convolutions runs channels-last on a CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sensitivity import models
from sensitivity.fused.layers import FusedConv2d
from sensitivity.fused.models import fuse


@pytest.mark.parametrize("form", ["grouped", "per_member", "channels_last"])
@pytest.mark.parametrize("args", [dict(kernel_size=5, padding=2), dict(kernel_size=3, stride=2, groups=2, bias=False),
                                  dict(kernel_size=1, dilation=2)])
def test_both_forms_equal_the_members_convolutions(form, args):
    gen = torch.Generator().manual_seed(0)
    k, n, c, o = 3, 5, 4, 6
    solos = [nn.Conv2d(c, o, **args).double() for _ in range(k)]
    for m in solos:  # distinct weights per member, so a mixed-up member shows
        for p in m.parameters():
            p.data = torch.randn(p.shape, generator=gen, dtype=torch.float64)
    xs = [torch.randn(n, c, 9, 9, generator=gen, dtype=torch.float64) for _ in range(k)]
    grads = [torch.randn_like(m(x)) for m, x in zip(solos, xs)]
    for m, x, g in zip(solos, xs, grads):
        m(x).backward(g)
    fused = FusedConv2d(solos)
    x = torch.cat(xs, 1)
    if form == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    out = fused(x) if form == "channels_last" else getattr(fused, form)(x)
    out.backward(torch.cat(grads, 1))
    torch.testing.assert_close(out, torch.cat([m(xk) for m, xk in zip(solos, xs)], 1), rtol=1e-12, atol=1e-12)
    for j, m in enumerate(solos):
        torch.testing.assert_close(fused.weight.grad[j], m.weight.grad, rtol=1e-12, atol=1e-12)
        if m.bias is not None:
            torch.testing.assert_close(fused.bias.grad[j], m.bias.grad, rtol=1e-12, atol=1e-12)
    expected_dx = torch.cat([torch.autograd.grad(m(xk.requires_grad_()), xk, g)[0]
                             for m, xk, g in zip(solos, xs, grads)], 1)
    torch.testing.assert_close(x.grad, expected_dx, rtol=1e-12, atol=1e-12)


def test_a_cpu_input_takes_the_form_of_its_memory(monkeypatch):
    fused = FusedConv2d([nn.Conv2d(2, 3, 3) for _ in range(2)])
    calls = []
    monkeypatch.setattr(FusedConv2d, "grouped", lambda self, x: calls.append("grouped"))
    monkeypatch.setattr(FusedConv2d, "per_member", lambda self, x: calls.append("per_member"))
    x = torch.randn(4, 4, 6, 6)
    fused(x), fused(x.contiguous(memory_format=torch.channels_last))
    assert calls == ["per_member", "grouped"]


def test_narrow_convolutions_run_channels_last_on_a_cpu_wide_ones_member_by_member(monkeypatch):
    seen = []
    forward = FusedConv2d.forward
    monkeypatch.setattr(FusedConv2d, "forward", lambda self, x: seen.append(
        x.is_contiguous(memory_format=torch.channels_last)) or forward(self, x))
    lenet = fuse([models.build("lenet5", (3, 32, 32), 10) for _ in range(2)])
    assert lenet(torch.randn(2, 4, 3, 32, 32)).shape == (2, 4, 10) and seen == [True, True]
    seen.clear()
    resnet = fuse([models.build("resnet18", (3, 8, 8), 10) for _ in range(2)])
    assert resnet(torch.randn(2, 4, 3, 8, 8)).shape == (2, 4, 10) and seen[0] is False


def test_off_the_cpu_the_grouped_convolution_runs(monkeypatch):
    """GPUs keep HFTA's one grouped convolution (shown on the meta device: no CPU, nothing computed)."""
    fused = FusedConv2d([nn.Conv2d(4, 6, 3) for _ in range(3)]).to("meta")
    monkeypatch.setattr(fused, "per_member", lambda x: pytest.fail("per-member convolutions off the CPU"))
    assert fused(torch.empty(2, 12, 9, 9, device="meta")).shape == (2, 18, 7, 7)
