"""Small stand-ins for torchvision's and timm's ResNets (CI installs neither): the same children, names
and order, the ImageNet stem, and stages of strides 1, 2, 2, 2 (a total stride of 32), at small widths."""

import types

import torch
import torch.nn as nn


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.down is None else self.down(x)))


WIDTHS = (8, 16, 32, 64)


def _stem_and_stages(model: nn.Module, activation: str) -> None:
    """conv1 (7x7, stride 2), bn1, the activation, maxpool (3x3, stride 2), layer1..4."""
    model.conv1 = nn.Conv2d(3, WIDTHS[0], 7, 2, 3, bias=False)
    model.bn1 = nn.BatchNorm2d(WIDTHS[0])
    setattr(model, activation, nn.ReLU())
    model.maxpool = nn.MaxPool2d(3, 2, 1)
    cin = WIDTHS[0]
    for i, (width, stride) in enumerate(zip(WIDTHS, (1, 2, 2, 2))):
        setattr(model, f"layer{i + 1}", BasicBlock(cin, width, stride))
        cin = width


class TorchvisionResNet(nn.Module):
    """torchvision's ResNet layout: conv1, bn1, relu, maxpool, layer1..4, avgpool, fc."""

    def __init__(self, num_classes=1000, weights=None):
        super().__init__()
        assert weights is None
        _stem_and_stages(self, "relu")
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(WIDTHS[-1], num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class SelectAdaptivePool2d(nn.Module):
    """timm's global pool (``pool_type='avg'``, ``flatten=True``): [B, C, h, w] -> [B, C]."""

    def forward(self, x):
        return x.mean(dim=(2, 3))


class TimmResNet(nn.Module):
    """timm's ResNet layout: conv1, bn1, act1, maxpool, layer1..4, global_pool, fc; forward_features,
    forward_head and get_classifier as timm's."""

    def __init__(self, num_classes=1000):
        super().__init__()
        _stem_and_stages(self, "act1")
        self.global_pool = SelectAdaptivePool2d()
        self.fc = nn.Linear(WIDTHS[-1], num_classes)

    def get_classifier(self):
        return self.fc

    def forward_features(self, x):
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, x):
        return self.fc(self.global_pool(x))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def fake_torchvision() -> types.ModuleType:
    """A ``torchvision`` whose ``models.resnet18`` is :class:`TorchvisionResNet`."""
    module = types.ModuleType("torchvision")
    module.models = types.SimpleNamespace(resnet18=TorchvisionResNet)
    return module


def fake_timm() -> types.ModuleType:
    """A ``timm`` with ``create_model`` and ``is_model``, whose one model ``resnet18`` is :class:`TimmResNet`."""
    module = types.ModuleType("timm")
    module.is_model = lambda name: name == "resnet18"

    def create_model(name, pretrained=False, num_classes=1000):
        assert module.is_model(name) and not pretrained
        return TimmResNet(num_classes)

    module.create_model = create_model
    return module
