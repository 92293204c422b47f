"""sensitivity.models: shapes, architectures and argument checks (a few seconds in all)."""

import pytest
import torch
from torch import nn

from sensitivity import models as M


pytestmark = pytest.mark.usefixtures("one_thread")


CASES = [
    ("logreg", (1, 8, 8), {}),
    ("logreg", (20,), {}),
    ("mlp", (1, 28, 28), {"hidden": [1000, 100]}),
    ("mlp", (20,), {"hidden": [100, 100, 100]}),
    ("lenet5", (1, 28, 28), {}),
    ("lenet5", (3, 32, 32), {}),
    ("vgg16", (3, 32, 32), {}),
    ("resnet18", (3, 32, 32), {}),
    ("resnet18", (1, 8, 8), {}),
    ("resnet34", (3, 32, 32), {}),
]


@pytest.mark.parametrize("name,shape,args", CASES)
def test_build_forward_backward_step(name, shape, args):
    torch.manual_seed(0)
    model = M.build(name, shape, 7, args)
    x, y = torch.randn(2, *shape), torch.tensor([1, 6])
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert model(x).shape == (2, 7)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_architectures():
    mlp = M.build("mlp", (1, 28, 28), 10, {"hidden": [1000, 1000]})
    widths = [m.out_features for m in mlp.modules() if isinstance(m, nn.Linear)]
    assert widths == [1000, 1000, 10]
    lenet = M.build("lenet5", (1, 28, 28), 10)
    convs = [m for m in lenet.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in lenet.modules() if isinstance(m, nn.Linear)]
    assert [c.out_channels for c in convs] == [6, 16] and convs[0].padding == (2, 2)
    assert [(m.in_features, m.out_features) for m in linears] == [(400, 120), (120, 84), (84, 10)]
    assert M.build("lenet5", (3, 32, 32), 10)[0].padding == (0, 0)  # 32x32 needs no padding: 400 features too
    vgg = M.build("vgg16", (3, 32, 32), 10)
    assert sum(isinstance(m, nn.Conv2d) for m in vgg.modules()) == 13
    assert sum(isinstance(m, nn.BatchNorm2d) for m in vgg.modules()) == 13
    for name, blocks in (("resnet18", [2, 2, 2, 2]), ("resnet34", [3, 4, 6, 3])):
        net = M.build(name, (3, 32, 32), 10)
        assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
        assert isinstance(net.maxpool, nn.Identity)
        assert [len(getattr(net, f"layer{i}")) for i in range(1, 5)] == blocks
    assert M.build("resnet18", (1, 28, 28), 10).conv1.in_channels == 1


def test_same_seed_same_weights():
    torch.manual_seed(3)
    a = M.build("resnet18", (3, 32, 32), 10)
    torch.manual_seed(3)
    b = M.build("resnet18", (3, 32, 32), 10)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_bad_models_and_args():
    with pytest.raises(ValueError, match="model: unknown model 'alexnet'"):
        M.build("alexnet", (3, 32, 32), 10)
    with pytest.raises(ValueError, match="model: vgg16 needs images of at least 32x32"):
        M.build("vgg16", (1, 28, 28), 10)
    with pytest.raises(ValueError, match="model: lenet5 needs images of at least 12x12"):
        M.build("lenet5", (1, 8, 8), 10)
    with pytest.raises(ValueError, match=r"model: resnet18 needs image inputs"):
        M.build("resnet18", (20,), 10)
    with pytest.raises(ValueError, match="model_args.hidden"):
        M.check_model_args("mlp", {"hidden": [100, 0]})
    with pytest.raises(ValueError, match="model_args.width"):
        M.check_model_args("logreg", {"width": 3})
    assert M.check_model_args("mlp", {"hidden": 50}) == {"hidden": [50]}
    assert M.check_model_args("mlp", None) == {"hidden": [100, 100]}
