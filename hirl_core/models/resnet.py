"""torchvision ResNets with a configurable base width and a small-image stem.

Built from torchvision's own blocks so that, at width 64 with the ImageNet stem, parameter names and
shapes are exactly torchvision's (and the seed's published ResNet-50 weights load unchanged).
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

RESNET_LAYOUTS = {"resnet18": (BasicBlock, [2, 2, 2, 2]), "resnet34": (BasicBlock, [3, 4, 6, 3]),
                  "resnet50": (Bottleneck, [3, 4, 6, 3]), "resnet101": (Bottleneck, [3, 4, 23, 3])}


class ResNetTrunk(ResNet):
    """ResNet without its classifier; `forward` returns the pooled features [B, out_dim]."""

    def __init__(self, arch: str, width: int = 64, in_chans: int = 3, small_stem: bool = False,
                 stem_stride: int = 1, zero_init_residual: bool = False):
        block, layers = RESNET_LAYOUTS[arch]
        super().__init__(block, layers, zero_init_residual=zero_init_residual)
        if width != 64 or small_stem or in_chans != 3:
            self._rebuild(block, layers, width, in_chans, small_stem, stem_stride, zero_init_residual)
        self.out_dim = width * 8 * block.expansion
        self.fc = nn.Identity()

    def _rebuild(self, block, layers, width, in_chans, small_stem, stem_stride, zero_init_residual):
        # Re-create the stem and stages at the requested width; ResNet.__init__ hard-codes 64.
        if small_stem:  # CIFAR-style 3x3 stem without max-pool, for 28-64 px inputs
            self.conv1 = nn.Conv2d(in_chans, width, 3, stem_stride, 1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_chans, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.inplanes = width
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                last_bn = getattr(m, "bn3", None) if isinstance(m, Bottleneck) else getattr(m, "bn2", None)
                if isinstance(m, (BasicBlock, Bottleneck)) and last_bn is not None:
                    nn.init.zeros_(last_bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def build_resnet(cfg) -> ResNetTrunk:
    return ResNetTrunk(cfg.arch, width=cfg.get("width", 64), in_chans=cfg.get("in_chans", 3),
                       small_stem=cfg.get("small_stem", False), stem_stride=cfg.get("stem_stride", 1),
                       zero_init_residual=cfg.get("zero_init_residual", False))
