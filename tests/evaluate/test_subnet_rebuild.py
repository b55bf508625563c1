"""`load_subnet` rebuilds a subnet from its file's description (model name, arguments,
width-space settings, widths) and weights: outputs identical to the module before saving,
on the 13 core models at tiny input sizes (one random config, random side, each)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from widthsearch.evaluate import load_subnet, save_subnet
from widthsearch.supernet.checkpoint import build_supernet

# (registered name, in_chans, input size): the models of tests/supernet/test_supernet.py
MODELS = [
    ("resnet20", 1, 28),
    ("resnet56", 1, 28),
    ("tv:resnet18", 3, 32),
    ("tv:resnet50", 3, 32),
    ("tv:mobilenet_v2", 3, 32),
    ("tv:mobilenet_v3_small", 3, 32),
    ("tv:efficientnet_b0", 3, 32),
    ("tv:regnet_x_400mf", 3, 32),
    ("tv:vgg11_bn", 3, 32),
    ("timm:resnet18", 3, 32),
    ("timm:mobilenetv2_100", 3, 32),
    ("timm:efficientnet_b0", 3, 32),
    ("timm:mobilenetv3_small_100", 3, 32),
]


@pytest.mark.parametrize(("name", "in_chans", "size"), MODELS, ids=[m[0] for m in MODELS])
def test_load_subnet_rebuilds_the_saved_module_exactly(name, in_chans, size, tmp_path):
    seed = sum(map(ord, name))
    torch.manual_seed(seed)
    meta = {
        "model": name,
        "num_classes": 10,
        "in_chans": in_chans,
        "input_size": size,
        "bins": 4,
        "min_bins": 1,
        "round_to": 1,
    }
    sn = build_supernet(meta)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # BN statistics that show any channel mix-up in the outputs
        for m in sn.model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    rng = np.random.default_rng(seed)
    cfg = sn.space.sample(rng)
    module = sn.extract(cfg, side=str(rng.choice(["left", "right"]))).eval()
    x = torch.randn(2, in_chans, size, size, generator=g)
    with torch.no_grad():
        expected = module(x)
    path = tmp_path / "sub.pt"
    save_subnet({"module": module, "widths": cfg, "meta": dict(sn.meta)}, path)
    payload = torch.load(path, weights_only=True)
    assert "module" not in payload and payload["meta"]["model"] == name

    rebuilt = load_subnet(path)
    assert type(rebuilt) is type(module) and not rebuilt.training
    assert not rebuilt._forward_pre_hooks and not rebuilt._forward_hooks
    with torch.no_grad():
        assert torch.equal(rebuilt(x), expected)


def test_a_subnet_record_saves_plain_values_and_reads_back(tmp_path):
    from widthsearch.evaluate import SubnetRecord, read_subnet
    from widthsearch.supernet import SupernetSpec

    sn = SupernetSpec("resnet20", 10, 1, 12, bins=4).build()
    cfg = {name: np.int64(width) for name, width in sn.space.uniform(0.5).items()}
    record = SubnetRecord(
        module=sn.extract(cfg, side="left"),
        widths=cfg,
        meta=sn.meta,
        inheritance={"chosen": "left", "scores": {"left": 0.5}},
        macs=np.int64(sn.macs(cfg)),
        params=sn.params(cfg),
        full_macs=sn.macs(),
        full_params=sn.params(),
        recipe={"data": {"name": "synthetic"}},
        budget_macs=np.int64(sn.macs(cfg)),
        score=np.float32(0.5),
    )
    save_subnet(record.to_payload(), tmp_path / "r.pt")
    back = read_subnet(tmp_path / "r.pt")
    assert back["widths"] == {k: int(v) for k, v in cfg.items()}
    assert type(back["macs"]) is int and type(back["budget_macs"]) is int
    assert type(back["score"]) is float and back["strategy"] == "widths"
    assert back["supernet"] is None and back["full_macs"] == sn.macs()
    x = torch.randn(2, 1, 12, 12)
    torch.testing.assert_close(back["module"](x), record.module.eval()(x))
