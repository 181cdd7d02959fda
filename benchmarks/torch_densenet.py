"""A torchvision-equivalent DenseNet in plain PyTorch, for comparisons.

The CPU build of torch has no torchvision, so the network is written here,
with torchvision's module layout and state-dict keys
(``features.{conv0,norm0,denseblockN,transitionN,norm5}``, ``classifier``):
its checkpoints load into the matching `build_densenet` presets. Used by the
serving benchmark and by the tests of the PyTorch weight converter.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

nn = torch.nn

ARCHITECTURES = {
    "densenet121": (32, (6, 12, 24, 16), 64),
    "densenet161": (48, (6, 12, 36, 24), 96),
    "densenet169": (32, (6, 12, 32, 32), 64),
    "densenet201": (32, (6, 12, 48, 32), 64),
}


class _Layer(nn.Module):
    def __init__(self, channels: int, growth: int, bn_size: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(channels, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, features):
        x = torch.cat(features, 1)
        x = self.conv1(self.relu1(self.norm1(x)))
        return self.conv2(self.relu2(self.norm2(x)))


class _Block(nn.ModuleDict):
    def __init__(self, layers: int, channels: int, growth: int) -> None:
        super().__init__(
            {f"denselayer{i + 1}": _Layer(channels + i * growth, growth) for i in range(layers)}
        )

    def forward(self, x):
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    def __init__(self, channels: int, out: int) -> None:
        super().__init__(
            OrderedDict(
                norm=nn.BatchNorm2d(channels),
                relu=nn.ReLU(),
                conv=nn.Conv2d(channels, out, 1, bias=False),
                pool=nn.AvgPool2d(2, 2),
            )
        )


class TorchDenseNet(nn.Module):
    """torchvision's DenseNet layout: features.{conv0,norm0,denseblockN,transitionN,norm5}.

    ``small_inputs=True`` replaces the ImageNet stem by the paper's CIFAR one
    (a single 3x3 convolution, as `build_densenet`'s ``stem="cifar"``).
    """

    def __init__(
        self,
        growth: int,
        blocks: tuple[int, ...],
        stem: int,
        classes: int = 1000,
        small_inputs: bool = False,
    ):
        super().__init__()
        if small_inputs:  # the paper's CIFAR stem: one 3x3 convolution (gpleiss's small_inputs)
            parts = OrderedDict(conv0=nn.Conv2d(3, stem, 3, padding=1, bias=False))
        else:
            parts = OrderedDict(
                conv0=nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False),
                norm0=nn.BatchNorm2d(stem),
                relu0=nn.ReLU(),
                pool0=nn.MaxPool2d(3, stride=2, padding=1),
            )
        channels = stem
        for i, layers in enumerate(blocks):
            parts[f"denseblock{i + 1}"] = _Block(layers, channels, growth)
            channels += layers * growth
            if i < len(blocks) - 1:
                parts[f"transition{i + 1}"] = _Transition(channels, channels // 2)
                channels //= 2
        parts["norm5"] = nn.BatchNorm2d(channels)
        self.features = nn.Sequential(parts)
        self.classifier = nn.Linear(channels, classes)

    def forward(self, x):
        x = torch.relu(self.features(x))
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def random_torch_densenet(
    name: str | tuple[int, tuple[int, ...], int], seed: int = 0, classes: int = 1000
) -> TorchDenseNet:
    """A torchvision-layout DenseNet with random weights and trained-looking BN statistics.

    ``name`` is a key of `ARCHITECTURES` or a ``(growth, blocks, stem)`` triple.
    """
    torch.manual_seed(seed)
    architecture = ARCHITECTURES[name] if isinstance(name, str) else name
    net = TorchDenseNet(*architecture, classes=classes)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):  # statistics a trained net would have
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.3, 0.3)
                module.running_var.uniform_(0.5, 2.0)
    return net.eval()


__all__ = ["ARCHITECTURES", "TorchDenseNet", "random_torch_densenet"]
