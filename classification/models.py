"""The paper's image classifiers (§5.1, Appendix D) as the released code builds them, plus a small demo net.

Every model is a :class:`FeatureClassifier`: ``body`` maps images to the penultimate features ``[N, D]`` and ``fc`` is
the last linear layer, so the trainer can log the feature norm (Appendix G, Fig. 10), the last-layer weight norm
(Fig. 3e) and last-layer gradient norms (Fig. 4b-d) without hooks. ``model(x, return_features=True)`` returns
``(logits, features)`` through the module's own forward, which DistributedDataParallel needs.

CIFAR variants (32x32 inputs; any size and channel count work thanks to adaptive pooling):

=====================  ==========================================================================================
``resnet50``           bottleneck ResNet [3, 4, 6, 3], 3x3 stride-1 stem, no max-pool (torchvision blocks)
``resnet110``          the released code's "ResNet-110": bottleneck [3, 4, 26, 3] with ImageNet widths (64-512,
                       expansion 4), *not* He et al.'s 3-stage basic-block CIFAR ResNet-110 (1.7M parameters)
``wide_resnet26_10``   the released code's WRN-26-10: 3 stages x 4 post-activation basic blocks, widths 160 /
                       320 / 640, no dropout (Zagoruyko & Komodakis use pre-activation blocks and depth 6n+4)
``densenet121``        DenseNet-BC, growth 32, blocks [6, 12, 24, 16], compression 0.5, 3x3 stride-1 stem with no
                       norm / max-pool (torchvision blocks)
``resnet50_tiny``      Tiny-ImageNet ResNet-50 of the released code: the CIFAR stem and a 2x2 adaptive average
                       pool, so the last layer sees 4 x 2048 = 8192 features
``small_cnn``          a 5-conv net (0.14M parameters at width 32) for quick CPU runs and the tests
``mlp``                2 hidden layers of 512 units (BN + ReLU) on the flattened image: the CPU demo's model
=====================  ==========================================================================================
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torchvision.models.densenet import DenseNet
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
from focal_calibration.validation import check_int

__all__ = ["FeatureClassifier", "build_model", "MODEL_NAMES"]


class FeatureClassifier(nn.Module):
    """``logits = fc(body(x))``; ``body`` ends with the pooled, flattened penultimate features."""

    def __init__(self, body: nn.Module, fc: nn.Linear):
        super().__init__()
        self.body = body
        self.fc = fc

    def forward(self, x: torch.Tensor, return_features: bool = False):
        features = self.body(x)
        logits = self.fc(features)
        return (logits, features) if return_features else logits


def _cifar_resnet(layers, num_classes: int, in_channels: int, pool_size: int = 1) -> FeatureClassifier:
    net = ResNet(Bottleneck, layers, num_classes=num_classes)
    # CIFAR stem of the released code: one 3x3 stride-1 conv, no max-pool (a 7x7/2 + pool would leave 1x1 maps).
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    body = nn.Sequential(net.conv1, net.bn1, net.relu, net.layer1, net.layer2, net.layer3, net.layer4,
                         nn.AdaptiveAvgPool2d(pool_size), nn.Flatten())
    fc = nn.Linear(512 * Bottleneck.expansion * pool_size * pool_size, num_classes)
    return FeatureClassifier(body, fc)


def resnet50(num_classes: int, in_channels: int = 3) -> FeatureClassifier:
    return _cifar_resnet([3, 4, 6, 3], num_classes, in_channels)


def resnet110(num_classes: int, in_channels: int = 3) -> FeatureClassifier:
    return _cifar_resnet([3, 4, 26, 3], num_classes, in_channels)


def resnet50_tiny(num_classes: int, in_channels: int = 3) -> FeatureClassifier:
    return _cifar_resnet([3, 4, 6, 3], num_classes, in_channels, pool_size=2)


def wide_resnet26_10(num_classes: int, in_channels: int = 3, depth: int = 26, width: int = 10) -> FeatureClassifier:
    if (depth - 2) % 6:
        raise ValueError(f"wide ResNet depth must be 6n + 2 in the released code's layout, got {depth}")
    blocks = (depth - 2) // 6
    layers: list[nn.Module] = [nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
                               nn.ReLU(inplace=True)]
    channels = 16
    for stage, planes in enumerate((16 * width, 32 * width, 64 * width)):
        for i in range(blocks):
            stride = 2 if stage > 0 and i == 0 else 1
            downsample = None
            if stride != 1 or channels != planes:
                downsample = nn.Sequential(nn.Conv2d(channels, planes, 1, stride=stride, bias=False),
                                           nn.BatchNorm2d(planes))
            layers.append(BasicBlock(channels, planes, stride, downsample))
            channels = planes
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    body = nn.Sequential(*layers)
    for module in body.modules():
        if isinstance(module, nn.Conv2d):  # He init (fan-out), as the released code
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return FeatureClassifier(body, nn.Linear(channels, num_classes))


def densenet121(num_classes: int, in_channels: int = 3) -> FeatureClassifier:
    net = DenseNet(growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64, num_classes=num_classes)
    features = net.features
    # CIFAR stem: a 3x3 stride-1 conv straight into the first dense block (its layers start with BN-ReLU).
    features.conv0 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(features.conv0.weight)
    features.norm0, features.relu0, features.pool0 = nn.Identity(), nn.Identity(), nn.Identity()
    body = nn.Sequential(features, nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return FeatureClassifier(body, net.classifier)


def small_cnn(num_classes: int, in_channels: int = 1, width: int = 32) -> FeatureClassifier:
    """Two conv pairs with max-pooling and one wider conv, BN + ReLU after each, global average pool."""
    def conv(c_in, c_out):
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]

    w = width
    body = nn.Sequential(*conv(in_channels, w), *conv(w, w), nn.MaxPool2d(2),
                         *conv(w, 2 * w), *conv(2 * w, 2 * w), nn.MaxPool2d(2),
                         *conv(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return FeatureClassifier(body, nn.Linear(4 * w, num_classes))


def mlp(num_classes: int, in_channels: int = 1, image_size: int = 28, hidden: int = 512) -> FeatureClassifier:
    """Two hidden layers of ``hidden`` units with BN + ReLU on the flattened image (the fast CPU demo model)."""
    body = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, hidden, bias=False),
                         nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True))
    return FeatureClassifier(body, nn.Linear(hidden, num_classes))


_BUILDERS: dict[str, Callable[..., FeatureClassifier]] = {
    "resnet50": resnet50,
    "resnet110": resnet110,
    "wide_resnet26_10": wide_resnet26_10,
    "densenet121": densenet121,
    "resnet50_tiny": resnet50_tiny,
    "small_cnn": small_cnn,
    "mlp": mlp,
}
MODEL_NAMES = tuple(_BUILDERS)


def build_model(name: str, num_classes: int, in_channels: int = 3, image_size: int = 32) -> FeatureClassifier:
    """Build a model by name (see the module docstring) for ``num_classes`` classes and ``in_channels`` inputs
    (``image_size`` matters only for ``mlp``; the conv nets pool adaptively)."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    check_int(num_classes, "num_classes", 2)
    check_int(in_channels, "in_channels", 1)
    if name == "mlp":
        return mlp(num_classes, in_channels, image_size)
    return _BUILDERS[name](num_classes, in_channels)
