"""A fused convolution's forms on the CPU, against the K members' own convolutions (forward + backward).

A fused array holds K members' activations in channel layout (N, K·C, H, W) (sensitivity/fused/
layers.py). Timed per layer shape, as the time of K separate ``conv2d`` calls (the solo runs'
work) divided by that of:

- ``grouped``: one convolution with groups = K (the GPU form, HFTA's);
- ``channels-last``: the same grouped convolution on channels-last tensors;
- ``unfold+bmm``: ``F.unfold`` of the whole batch, one ``bmm`` per layer with the members as its batch
  (the columns are (K, C·kh·kw, N·L): one copy of the unfolded input);
- ``per-member``: each member's own ``conv2d`` on its slice of the channels, concatenated (the CPU form).

Process CPU time, median of interleaved rounds (all forms in one round), one thread.

    python benchmarks/fused_conv.py
    python benchmarks/fused_conv.py --rounds 9 --members 16
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

# (label, batch, in channels, out channels, side, kernel, padding)
LAYERS = [
    ("LeNet-5 conv1, MNIST, batch 32", 32, 1, 6, 28, 5, 2),
    ("LeNet-5 conv2, batch 32", 32, 6, 16, 14, 5, 0),
    ("LeNet-5 conv1, CIFAR-10, batch 128", 128, 3, 6, 32, 5, 0),
    ("LeNet-5 conv2, batch 128", 128, 6, 16, 14, 5, 0),
    ("ResNet-18 stage 1 (64@32x32), batch 32", 32, 64, 64, 32, 3, 1),
    ("ResNet-18 stage 4 (512@4x4), batch 32", 32, 512, 512, 4, 3, 1),
]


def forms(k: int, n: int, c: int, o: int, side: int, ks: int, pad: int) -> dict:
    """Each form as a function running forward and backward once."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, k * c, side, side, generator=gen)
    w = torch.randn(k, o, c, ks, ks, generator=gen).requires_grad_()
    b = torch.randn(k, o, generator=gen).requires_grad_()
    grad_x = c > 3  # a first layer needs no input gradient
    xs = [x[:, j * c:(j + 1) * c].clone().requires_grad_(grad_x) for j in range(k)]
    ws = [w[j].detach().clone().requires_grad_() for j in range(k)]
    bs = [b[j].detach().clone().requires_grad_() for j in range(k)]
    xg = x.clone().requires_grad_(grad_x)
    xcl = x.to(memory_format=torch.channels_last).requires_grad_(grad_x)
    side_out = side + 2 * pad - ks + 1

    def solo():
        for xj, wj, bj in zip(xs, ws, bs):
            F.conv2d(xj, wj, bj, padding=pad).sum().backward()

    def grouped(inp=xg):
        F.conv2d(inp, w.reshape(-1, c, ks, ks), b.reshape(-1), padding=pad, groups=k).sum().backward()

    def unfold_bmm():
        cols = F.unfold(xg, ks, padding=pad)  # (N, K·C·kh·kw, L)
        cols = cols.view(n, k, -1, cols.shape[-1]).permute(1, 2, 0, 3).reshape(k, c * ks * ks, -1)
        out = torch.baddbmm(b.unsqueeze(2), w.view(k, o, -1), cols)  # (K, O, N·L)
        out = out.view(k, o, n, side_out, side_out).permute(2, 0, 1, 3, 4).reshape(n, k * o, side_out, side_out)
        out.sum().backward()

    def per_member():
        outs = [F.conv2d(xj, wj, bj, padding=pad) for xj, wj, bj in zip(xg.chunk(k, 1), w.unbind(0), b.unbind(0))]
        torch.cat(outs, 1).sum().backward()

    return {"solo": solo, "grouped": grouped, "channels-last": lambda: grouped(xcl), "unfold+bmm": unfold_bmm,
            "per-member": per_member}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=8, help="K (default 8; ResNet layers use K/2)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = ["grouped", "channels-last", "unfold+bmm", "per-member"]
    print(f"fused convolution forms against K solo conv2d calls (speed-up, CPU time, median of {args.rounds} rounds, "
          "1 thread)")
    print(f"{'layer':<42}{'K':>3}{'solo ms':>9}" + "".join(f"{n:>15}" for n in names))
    for label, n, c, o, side, ks, pad in LAYERS:
        k = args.members if c < 64 else max(2, args.members // 2)
        fns = forms(k, n, c, o, side, ks, pad)
        for fn in fns.values():  # warm-up
            fn()
        times = {name: [] for name in fns}
        for _ in range(args.rounds):
            for name, fn in fns.items():
                start = time.process_time()
                fn()
                times[name].append(time.process_time() - start)
        solo = statistics.median(times["solo"])
        ratios = [statistics.median(s / t for s, t in zip(times["solo"], times[name])) for name in names]
        print(f"{label:<42}{k:>3}{solo * 1e3:>9.1f}" + "".join(f"{r:>14.2f}x" for r in ratios), flush=True)


if __name__ == "__main__":
    main()
