"""Export: TorchScript matches the module, timm's shape string rebuilds a loadable model,
ONNX only with the optional package, and --export on the CLI."""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import pytest
import torch
from widthsearch.evaluate import (
    export_subnet,
    export_timm_string,
    export_torchscript,
    load_subnet,
    read_subnet,
    timm_model_from_string,
    timm_shape_string,
)
from widthsearch.recipes.cli import main


def _jit_load(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path))


def test_torchscript_export_matches_the_module(subnet_path, tmp_path):
    payload = read_subnet(subnet_path)
    module, size = payload["module"], payload["meta"]["input_size"]
    path = export_torchscript(module, tmp_path / "m.ts.pt", example=torch.zeros(1, 1, size, size))
    scripted = _jit_load(path)
    x = torch.randn(5, 1, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(scripted(x), module(x), atol=1e-5)  # another batch size too


def test_timm_shape_string_round_trip(timm_subnet_path):
    import timm
    from timm.models import adapt_model_from_string

    payload = read_subnet(timm_subnet_path)
    module = payload["module"]
    text = timm_shape_string(module)
    assert text.split("***")[0] == f"conv1.weight:{list(module.conv1.weight.shape)}"
    assert "bn1.num_batches_tracked:[]" in text.split("***")
    # exactly as a user would: timm's own adapter on a fresh timm model
    parent = timm.create_model("resnet18", num_classes=10, in_chans=1)
    rebuilt = adapt_model_from_string(parent, text)
    rebuilt.load_state_dict(payload["state_dict"])
    rebuilt.eval()
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), module(x), atol=1e-5)
    # the subnet really is narrower than the parent somewhere
    assert any(
        p.shape != q.shape
        for p, q in zip(parent.state_dict().values(), rebuilt.state_dict().values(), strict=True)
    )
    assert export_timm_string(module, payload["meta"]) == text
    same = timm_model_from_string("timm:resnet18", text, num_classes=10, in_chans=1)
    same.load_state_dict(payload["state_dict"])


def test_timm_string_needs_a_timm_model(subnet_path):
    payload = read_subnet(subnet_path)
    with pytest.raises(ValueError, match="needs a timm: model"):
        export_timm_string(payload["module"], payload["meta"])


def test_export_subnet_writes_every_applicable_format(timm_subnet_path, tmp_path):
    written = export_subnet(timm_subnet_path, tmp_path / "exp")
    expected = {"torchscript", "timm", "widths"}
    if importlib.util.find_spec("onnx") is not None:
        expected.add("onnx")
    assert set(written) == expected
    assert written["torchscript"].endswith("subnet.ts.pt")
    widths = json.loads(Path(written["widths"]).read_text())
    payload = read_subnet(timm_subnet_path)
    assert widths["widths"] == payload["widths"] and widths["macs"] == payload["macs"]
    assert Path(written["timm"]).read_text().strip() == timm_shape_string(payload["module"])
    assert not [p for p in (tmp_path / "exp").iterdir() if p.name.endswith(".tmp")]
    # the written files are the module: TorchScript computes the same outputs, ONNX holds the
    # same weights
    module = payload["module"].eval()
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(_jit_load(written["torchscript"])(x), module(x), atol=1e-5)
    if "onnx" in written:
        import onnx
        from onnx import numpy_helper

        graph = onnx.load(written["onnx"]).graph
        onnx.checker.check_model(onnx.load(written["onnx"]))
        weights = sorted(tuple(numpy_helper.to_array(t).shape) for t in graph.initializer)
        convs = sorted(
            tuple(m.weight.shape) for m in module.modules() if isinstance(m, torch.nn.Conv2d)
        )
        assert all(shape in weights for shape in convs)
    with pytest.raises(ValueError, match="unknown export format"):
        export_subnet(timm_subnet_path, tmp_path / "exp", formats=["tflite"])


def test_extract_cli_export_option(supernet_path, search_path, tmp_path, capsys):
    out, folder = tmp_path / "sub.pt", tmp_path / "exp"
    argv = ["extract", str(supernet_path), "--from", str(search_path), "--strategy", "uniform"]
    argv += ["--budget", "0.75", "--out", str(out), "--export", str(folder)]
    assert main([*argv, "--inheritance", "left"]) == 0
    assert (folder / "sub.ts.pt").is_file() and (folder / "sub.widths.json").is_file()
    assert not (folder / "sub.timm.txt").exists()  # resnet20 is not a timm model
    module = load_subnet(out)
    x = torch.randn(2, 1, 12, 12)
    with torch.no_grad():
        assert torch.allclose(_jit_load(folder / "sub.ts.pt")(x), module(x), atol=1e-5)
