"""Model factory: built-in CIFAR ResNets, torchvision/timm by prefix, clear name errors."""

from __future__ import annotations

import io
import pickle

import pytest
import torch
import torch.fx
from torch import nn
from widthsearch.supernet.models import BasicBlock, CifarResNet, create_model, list_models


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _expected_params(depth: int, num_classes: int, in_chans: int) -> int:
    """Parameters of a CIFAR ResNet with option-B shortcuts, counted by hand."""
    n = (depth - 2) // 6
    total = in_chans * 16 * 9 + 2 * 16  # stem conv + BN
    in_planes = 16
    for planes in (16, 32, 64):
        for _ in range(n):
            total += in_planes * planes * 9 + planes * planes * 9 + 2 * 2 * planes
            if in_planes != planes:  # 1x1 projection + BN
                total += in_planes * planes + 2 * planes
            in_planes = planes
    return total + 64 * num_classes + num_classes  # fc


@pytest.mark.parametrize(("name", "depth"), [("resnet20", 20), ("resnet32", 32), ("resnet56", 56)])
def test_cifar_resnet_conv_layout(name: str, depth: int) -> None:
    model = create_model(name)
    assert isinstance(model, CifarResNet)
    shortcut_convs = [
        m for b in model.modules() if isinstance(b, BasicBlock) for m in _convs(b.shortcut)
    ]
    main_path = len(_convs(model)) - len(shortcut_convs)
    assert main_path == depth - 1  # plus the fc layer: `depth` weighted layers
    assert len(shortcut_convs) == 2  # stages 2 and 3 change shape
    assert all(c.kernel_size == (1, 1) and c.stride == (2, 2) for c in shortcut_convs)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 3 * (depth - 2) // 6
    assert [len(getattr(model, f"layer{i}")) for i in (1, 2, 3)] == [(depth - 2) // 6] * 3


def test_cifar_resnet_parameter_counts() -> None:
    # 432 + 32 stem, 14016 + 51648 + 205696 stages, 650 fc
    assert _params(create_model("resnet20")) == 272_474
    assert _params(create_model("resnet20", in_chans=1)) == 272_474 - 2 * 16 * 9
    for name, depth in (("resnet32", 32), ("resnet56", 56)):
        for num_classes, in_chans in ((10, 3), (100, 1)):
            model = create_model(name, num_classes=num_classes, in_chans=in_chans)
            assert _params(model) == _expected_params(depth, num_classes, in_chans)
    assert _expected_params(20, 10, 3) == 272_474


@pytest.mark.parametrize(("in_chans", "size"), [(1, 28), (3, 32)])
def test_cifar_resnet_output_shape(in_chans: int, size: int) -> None:
    model = create_model("resnet20", num_classes=7, in_chans=in_chans).eval()
    with torch.no_grad():
        assert model(torch.randn(4, in_chans, size, size)).shape == (4, 7)


def test_cifar_resnet_fx_traceable_and_equal() -> None:
    model = create_model("resnet20", in_chans=1).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x))
    targets = {n.target for n in traced.graph.nodes if n.op == "call_module"}
    assert {"conv1", "bn1", "layer1.0.conv1", "layer2.0.shortcut.0", "fc"} <= targets


def test_cifar_resnet_pickles_with_torch_save() -> None:
    model = create_model("resnet20", in_chans=1).eval()
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    x = torch.randn(1, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert type(pickle.loads(pickle.dumps(model))) is CifarResNet


def test_cifar_resnet_kaiming_init() -> None:
    model = create_model("resnet56")
    conv = model.layer3[1].conv1  # fan_out = 64 * 9
    assert conv.weight.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.05)
    assert torch.all(model.layer3[1].bn1.weight == 1)


def test_bad_depth() -> None:
    with pytest.raises(ValueError, match="6n"):
        CifarResNet(21)


def test_torchvision_in_chans_and_classes() -> None:
    model = create_model("tv:resnet18", num_classes=5, in_chans=1).eval()
    assert model.conv1.in_channels == 1
    assert model.conv1.out_channels == 64 and model.conv1.kernel_size == (7, 7)
    assert model.conv1.stride == (2, 2) and model.conv1.padding == (3, 3)
    assert model.fc.out_features == 5
    with torch.no_grad():
        assert model(torch.randn(2, 1, 64, 64)).shape == (2, 5)


def test_torchvision_nested_input_conv_is_replaced() -> None:
    model = create_model("tv:mobilenet_v2", num_classes=3, in_chans=2).eval()
    assert model.features[0][0].in_channels == 2  # set on the Sequential parent
    with torch.no_grad():
        assert model(torch.randn(1, 2, 64, 64)).shape == (1, 3)


def test_timm_in_chans_and_classes() -> None:
    model = create_model("timm:resnet18", num_classes=5, in_chans=1).eval()
    assert model.conv1.in_channels == 1
    with torch.no_grad():
        assert model(torch.randn(2, 1, 64, 64)).shape == (2, 5)


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("resnet21", "unknown model 'resnet21'"),
        ("vgg", "unknown model 'vgg'"),
        ("tv:resnet19", "unknown torchvision classifier 'resnet19'"),
        ("tv:fasterrcnn_resnet50_fpn", "unknown torchvision classifier"),  # not a classifier
        ("timm:not_a_model", "unknown timm model 'not_a_model'"),
    ],
)
def test_unknown_names(name: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as info:
        create_model(name)
    assert "\n" not in str(info.value)
    if ":" not in name:
        assert "resnet20" in str(info.value) and "tv:" in str(info.value)


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        create_model("resnet20", num_classes=0)


def test_list_models() -> None:
    names = list_models()
    assert names[:3] == ["resnet20", "resnet32", "resnet56"]
    assert any(n.startswith("tv:") for n in names)
    assert any(n.startswith("timm:") for n in names)


@pytest.mark.parametrize(
    ("name", "embedding"),
    [("timm:vit_tiny_patch16_224", "pos_embed"), ("tv:vit_b_16", "encoder.pos_embedding")],
)
def test_vision_transformers_are_built_for_the_input_size(name: str, embedding: str) -> None:
    """A ViT's position embeddings fix its input size: ``input_size`` builds it for that size
    (4 patches of 16 at 32 x 32, plus the class token); CNNs take any size and ignore it."""
    model = create_model(name, num_classes=3, in_chans=1, input_size=32).eval()
    assert model.get_parameter(embedding).shape[1] == 4 + 1
    with torch.no_grad():
        assert model(torch.randn(1, 1, 32, 32)).shape == (1, 3)
    cnn = create_model("timm:resnet18", num_classes=3, input_size=32)
    assert _params(cnn) == _params(create_model("timm:resnet18", num_classes=3))
    with pytest.raises(ValueError, match=r"cannot build 'tv:vit_b_16' with .*image_size=30"):
        create_model("tv:vit_b_16", input_size=30)  # not a multiple of the patch size


def test_a_failed_trace_prints_no_traceback(capfd) -> None:
    """Shape propagation prints the traceback of a failing node itself; the supernet says
    one line instead (here: a ViT built for 224 x 224 traced at 32 x 32)."""
    from widthsearch.supernet import Supernet, UnsupportedModelError

    model = create_model("timm:vit_tiny_patch16_224", num_classes=3)
    with pytest.raises(UnsupportedModelError, match="cannot trace VisionTransformer"):
        Supernet.from_model(model, torch.zeros(1, 3, 32, 32))
    assert capfd.readouterr().err == ""
