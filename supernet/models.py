"""Model factory: built-in CIFAR-style ResNets, torchvision and timm classifiers by name.

Every model is built with random weights (never a pretrained download: a download on a
machine without internet would fail half-way). Trained weights come from a file the user
gives (``widthsearch train --init``, see :mod:`widthsearch.supernet.warmstart`) or from
``widthsearch pretrain``.
"""

from __future__ import annotations

import difflib
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BasicBlock", "CifarResNet", "create_model", "list_models"]

_BUILTIN_DEPTHS = {"resnet20": 20, "resnet32": 32, "resnet56": 56}
_TV_PREFIX = "tv:"
_TIMM_PREFIX = "timm:"
_VALID_HINT = (
    f"valid: {', '.join(_BUILTIN_DEPTHS)}, tv:<torchvision classifier> (e.g. tv:resnet18) "
    "or timm:<timm model> (e.g. timm:resnet18)"
)


class BasicBlock(nn.Module):
    """Two 3x3 convs plus a shortcut: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    The shortcut is a 1x1 conv + BN ("option B") whenever the shape changes, because the
    zero-padding shortcut ("option A") ties channels to a fixed layout that cannot be slimmed.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for small images (He et al. 2016, section 4.2) with projection shortcuts.

    Stem 3x3 conv (16 ch) + BN + ReLU, stages ``layer1..layer3`` of ``n = (depth - 2) / 6``
    BasicBlocks with 16/32/64 channels (stride 2 at stages 2 and 3), global average pool,
    ``fc``. The forward has no data-dependent control flow so ``torch.fx`` can trace it.

    Args:
        depth: Total weighted layers on the main path, ``6n + 2`` (20, 32, 56, ...).
        num_classes: Classifier outputs.
        in_chans: Input image channels.
    """

    def __init__(self, depth: int = 20, num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {depth}")
        _check_positive(num_classes=num_classes, in_chans=in_chans)
        n = (depth - 2) // 6
        self.depth = depth
        self.conv1 = nn.Conv2d(in_chans, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = _make_stage(16, 16, n, stride=1)
        self.layer2 = _make_stage(16, 32, n, stride=2)
        self.layer3 = _make_stage(32, 64, n, stride=2)
        self.fc = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


def _make_stage(in_planes: int, planes: int, blocks: int, *, stride: int) -> nn.Sequential:
    layers = [BasicBlock(in_planes, planes, stride)]
    layers += [BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")


def list_models() -> list[str]:
    """Names ``create_model`` accepts: the built-ins, then the two prefix patterns."""
    return [
        *_BUILTIN_DEPTHS,
        "tv:<name>  any torchvision classifier, e.g. tv:resnet18, tv:mobilenet_v2",
        "timm:<name>  any timm model, e.g. timm:resnet18, timm:efficientnet_b0",
    ]


def create_model(
    name: str, *, num_classes: int = 10, in_chans: int = 3, input_size: int | None = None
) -> nn.Module:
    """Build a randomly initialised classifier by name.

    Args:
        name: ``resnet20``/``resnet32``/``resnet56``, ``tv:NAME`` (torchvision classifier) or
            ``timm:NAME`` (timm model).
        num_classes: Classifier outputs.
        in_chans: Input channels (1 for Fashion-MNIST); torchvision models get their first
            3-channel conv replaced, timm models take ``in_chans`` natively.
        input_size: The square input side the model will see. Models built for one input
            size (vision transformers: their position embeddings) are built for this one;
            the others take any size and ignore it.

    Returns:
        The model, in training mode.

    Raises:
        ValueError: Unknown name, or options the model cannot take.
    """
    _check_positive(num_classes=num_classes, in_chans=in_chans)
    key = name.strip()
    if key.lower() in _BUILTIN_DEPTHS:
        return CifarResNet(_BUILTIN_DEPTHS[key.lower()], num_classes, in_chans)
    if key.startswith(_TV_PREFIX):
        return _create_torchvision(key[len(_TV_PREFIX) :], num_classes, in_chans, input_size)
    if key.startswith(_TIMM_PREFIX):
        return _create_timm(key[len(_TIMM_PREFIX) :], num_classes, in_chans, input_size)
    raise ValueError(f"unknown model {name!r}{_suggest(key, list(_BUILTIN_DEPTHS))}; {_VALID_HINT}")


def _options(**values: Any) -> str:
    """``num_classes=10, in_chans=1``: the builder arguments an error names."""
    return ", ".join(f"{k}={v}" for k, v in values.items())


def _suggest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=3)
    return f" (did you mean {', '.join(close)}?)" if close else ""


# torchvision classifiers built for one input size, and the builder argument that sets it
_TV_SIZED = {"vit_": "image_size", "maxvit_": "input_size"}


def _create_torchvision(
    name: str, num_classes: int, in_chans: int, input_size: int | None
) -> nn.Module:
    import torchvision.models

    # Classifiers only: detection/segmentation builders share the registry but not the API.
    classifiers = torchvision.models.list_models(module=torchvision.models)
    if name not in classifiers:
        raise ValueError(
            f"unknown torchvision classifier {name!r} in 'tv:{name}'{_suggest(name, classifiers)}; "
            "see torchvision.models.list_models(module=torchvision.models)"
        )
    sized = {}
    for prefix, argument in _TV_SIZED.items():
        if input_size and name.startswith(prefix):
            sized[argument] = input_size if argument == "image_size" else (input_size,) * 2
    try:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **sized)
    except (TypeError, ValueError, AssertionError) as exc:
        options = _options(num_classes=num_classes, **sized)
        raise ValueError(f"cannot build 'tv:{name}' with {options}: {exc}") from exc
    if in_chans != 3:
        _replace_input_conv(model, in_chans, label=f"tv:{name}")
    return model


def _replace_input_conv(model: nn.Module, in_chans: int, *, label: str) -> None:
    """Swap the first 3-input-channel conv for one reading ``in_chans`` channels.

    The new weights cycle the old per-channel kernels and rescale them by ``sqrt(3 / in_chans)``
    so the output variance matches the model's own initialisation, whatever scheme it used.
    """
    found = next(
        (
            (q, m)
            for q, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and m.in_channels == 3
        ),
        None,
    )
    if found is None:
        raise ValueError(f"{label} has no 3-channel input convolution to adapt to {in_chans=}")
    qualname, old = found
    if old.groups != 1:
        raise ValueError(f"{label}: grouped input convolution {qualname!r} cannot be adapted")
    new = nn.Conv2d(
        in_chans,
        old.out_channels,
        old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        dilation=old.dilation,
        groups=old.groups,
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
    ).to(device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        repeats = math.ceil(in_chans / 3)
        weight = old.weight.repeat(1, repeats, 1, 1)[:, :in_chans]
        new.weight.copy_(weight * math.sqrt(3 / in_chans))
        if old.bias is not None:
            new.bias.copy_(old.bias)
    parent_name, _, child_name = qualname.rpartition(".")
    setattr(model.get_submodule(parent_name), child_name, new)


def _create_timm(name: str, num_classes: int, in_chans: int, input_size: int | None) -> nn.Module:
    import timm
    from timm.models import get_pretrained_cfg

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(
            f"unknown timm model {name!r} in 'timm:{name}'{hint}; see timm.list_models()"
        )
    sized = {}
    cfg = get_pretrained_cfg(name)
    if input_size and cfg is not None and getattr(cfg, "fixed_input_size", False):
        sized["img_size"] = input_size  # position embeddings (or windows) for this size
    try:
        return timm.create_model(
            name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **sized
        )
    except (RuntimeError, TypeError, ValueError, AssertionError) as exc:
        options = _options(num_classes=num_classes, in_chans=in_chans, **sized)
        raise ValueError(f"cannot build 'timm:{name}' with {options}: {exc}") from exc
