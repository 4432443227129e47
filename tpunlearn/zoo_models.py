"""Architectures the zoo defines itself (the libraries have no model this small).

``deeplabv3_resnet_tiny``: torchvision's ``DeepLabV3`` on a one-block-per-stage BasicBlock
ResNet, output stride 4, 128-channel ASPP (~1.3M parameters, for 64x64 inputs); the
``digitscenes-deeplabv3`` zoo model is this architecture trained on DigitScenes. It is
built like torchvision's own ``deeplabv3_*`` builders (``weights``, ``weights_backbone``,
``num_classes``, ``aux_loss``), so the deeplabv3 adapter treats it as one of them.

torchvision is imported only when a model is built; this module knows neither the adapters
nor the zoo's registry.
"""
from __future__ import annotations

from collections import OrderedDict

from torch import nn

from tpunlearn.errors import UsageError

__all__ = ["TINY_ASPP_CHANNELS", "TINY_ATROUS_RATES", "TINY_WIDTHS", "deeplabv3_resnet_tiny"]

TINY_WIDTHS = (32, 64, 128, 128)  # stem/layer1, layer2, layer3, layer4
TINY_ASPP_CHANNELS = 128
TINY_ATROUS_RATES = (2, 4, 6)  # in output-stride-4 pixels: 8, 16 and 24 input pixels


def deeplabv3_resnet_tiny(*, weights: None = None, weights_backbone: None = None, num_classes: int = 11,
                          aux_loss: bool | None = False) -> nn.Module:
    """torchvision ``DeepLabV3`` on a small ResNet, for 64x64 inputs (~1.3M parameters).

    Backbone (torchvision ``BasicBlock`` s, one per stage, torchvision's ResNet names):
    ``conv1`` 3x3 stride 1 (32 ch) + ``bn1`` + ``relu``, ``maxpool`` 3x3 stride 2,
    ``layer1`` 32 ch, ``layer2`` 64 ch stride 2, ``layer3`` 128 ch dilation 2, ``layer4``
    128 ch dilation 4: output stride 4 (a 16x16 map for 64x64 inputs; stride 8 would cap
    the digits' stroke IoU at about 0.72 even with ideal logits, stride 4 at about 0.94).

    Head: ``IntermediateLayerGetter(return_layers={"layer4": "out"[, "layer3": "aux"]})``,
    then torchvision's ``DeepLabHead`` layout at 128 channels (torchvision's class fixes 256):
    ``nn.Sequential(ASPP(128, (2, 4, 6), 128), Conv2d(128, 128, 3), BatchNorm2d, ReLU,
    Conv2d(128, num_classes, 1))``, so ``classifier.1`` and ``classifier.4`` are the last two
    convs as in ``DeepLabHead``; ``aux_loss`` adds torchvision's ``FCNHead(128, num_classes)``
    on ``layer3``. No pretrained weights exist (``weights``/``weights_backbone`` must be None).
    """
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.segmentation.deeplabv3 import DeepLabV3
    from torchvision.models.segmentation.fcn import FCNHead

    if weights is not None or weights_backbone is not None:
        raise UsageError("deeplabv3_resnet_tiny has no pretrained weights; load a checkpoint with weights=PATH")
    return_layers = {"layer4": "out"}
    if aux_loss:
        return_layers["layer3"] = "aux"
    backbone = IntermediateLayerGetter(_tiny_body(), return_layers=return_layers)
    classifier = _tiny_head(TINY_WIDTHS[3], int(num_classes))
    aux = FCNHead(TINY_WIDTHS[2], int(num_classes)) if aux_loss else None
    return DeepLabV3(backbone, classifier, aux)


def _tiny_stage(inplanes: int, planes: int, stride: int, dilation: int) -> nn.Sequential:
    """One torchvision ``BasicBlock``; a dilated one is built undilated and its two 3x3 convs then
    get ``dilation = padding = d`` (``BasicBlock`` refuses ``dilation > 1`` at build time; a
    ``Conv2d`` reads both attributes at each forward)."""
    from torchvision.models.resnet import BasicBlock, conv1x1

    down = None
    if stride != 1 or inplanes != planes:
        down = nn.Sequential(conv1x1(inplanes, planes, stride), nn.BatchNorm2d(planes))
    block = BasicBlock(inplanes, planes, stride, down)
    if dilation > 1:
        for conv in (block.conv1, block.conv2):
            conv.dilation, conv.padding = (dilation, dilation), (dilation, dilation)
    return nn.Sequential(block)


def _tiny_body() -> nn.Sequential:
    """The output-stride-4 ResNet body, with torchvision ResNet's initialisation."""
    w0, w1, w2, w3 = TINY_WIDTHS
    body = nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, w0, 3, stride=1, padding=1, bias=False)),
        ("bn1", nn.BatchNorm2d(w0)),
        ("relu", nn.ReLU(inplace=True)),
        ("maxpool", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
        ("layer1", _tiny_stage(w0, w0, 1, 1)),
        ("layer2", _tiny_stage(w0, w1, 2, 1)),
        ("layer3", _tiny_stage(w1, w2, 1, 2)),
        ("layer4", _tiny_stage(w2, w3, 1, 4)),
    ]))
    for m in body.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return body


def _tiny_head(in_channels: int, num_classes: int) -> nn.Sequential:
    """torchvision's ``DeepLabHead`` layout at :data:`TINY_ASPP_CHANNELS` channels."""
    from torchvision.models.segmentation.deeplabv3 import ASPP

    c = TINY_ASPP_CHANNELS
    return nn.Sequential(
        ASPP(in_channels, TINY_ATROUS_RATES, c),
        nn.Conv2d(c, c, 3, padding=1, bias=False),
        nn.BatchNorm2d(c),
        nn.ReLU(),
        nn.Conv2d(c, num_classes, 1),
    )
