"""Models whose channels mix somewhere (channel shuffle, split, a constant reshape): the
groups there keep full width and say why, the rest slims; timm's ViT slims everywhere (heads,
embedding, MLPs). Such supernets train and answer every search strategy. Exactness of their
subnets is in ``test_supernet.py``."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torchvision
from torch import nn
from widthsearch.search import SubnetEvaluator, get_strategy, list_strategies, resolve_budgets
from widthsearch.supernet import Supernet
from widthsearch.supernet.models import create_model
from widthsearch.supernet.steps import bcnet_step

OPTIONS = {"random": {"samples": 4}, "relax": {"steps": 6}, "evolution": {"trials": 12}}


def test_groups_where_channels_mix_keep_full_width_and_say_why():
    shufflenet = Supernet.from_model(
        torchvision.models.shufflenet_v2_x0_5(num_classes=10), torch.randn(1, 3, 32, 32)
    )
    searchable = [g.name for g in shufflenet.space.searchable]
    # the stem, each block's inner branch width and the last conv slim; the channels that
    # are split, concatenated and shuffled between blocks keep full width
    assert searchable[0] == "conv1.0" and searchable[-1] == "conv5.0"
    assert all(n.endswith(".branch2.0") for n in searchable[1:-1]) and len(searchable) == 18
    assert "'view'" in shufflenet.frozen["stage2.0.branch2.5"]
    assert "mixes or reorders channels" in shufflenet.frozen["stage2.0.branch2.5"]

    vit = Supernet.from_model(
        timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32),
        torch.randn(1, 3, 32, 32),
    )
    # timm's ViT slims everywhere: the embedding width (its class token and position
    # embedding sliced with it), each block's heads (whole heads) and MLP hidden width
    names = [g.name for g in vit.space.searchable]
    assert names[0] == "patch_embed.proj" and vit.frozen == {}
    assert names[1::2] == [f"blocks.{i}.attn:heads" for i in range(12)]
    assert names[2::2] == [f"blocks.{i}.mlp.fc1" for i in range(12)]
    assert vit.space["blocks.0.attn:heads"].choices == (1, 2, 3)
    # attention's two matmuls (5 tokens, head_dim 64) cost per head, which FlopCounterMode's
    # fused kernels would hide; qkv and proj cost 5 x (3 + 1) x 64 per head and channel
    form = vit.cost.quadratic_form().main
    heads, embedding = vit.space.index["blocks.0.attn:heads"], vit.space.index[names[0]]
    assert form.const == 0 and form.linear[heads] == 2 * 5 * 5 * 64
    assert form.quad[min(heads, embedding), max(heads, embedding)] == 5 * 4 * 64

    # torchvision's ViT reshapes its patch embeddings to a constant number of channels
    # (``self.hidden_dim``): its embedding, and the heads whose features it is, keep full
    # width there, the MLPs slim
    tv_vit = Supernet.from_model(
        torchvision.models.vit_b_16(num_classes=10, image_size=32), torch.randn(1, 3, 32, 32)
    )
    assert (
        "'reshape'" in tv_vit.frozen["conv_proj"] and "768 channels" in tv_vit.frozen["conv_proj"]
    )
    assert tv_vit.space.searchable[0].name == "encoder.layers.encoder_layer_0.mlp.0"

    resnet = Supernet.from_model(create_model("resnet20", in_chans=1), torch.randn(1, 1, 28, 28))
    assert resnet.frozen == {}


def _tiny_vit() -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=16, patch_size=8, embed_dim=16, depth=2, num_heads=4, mlp_ratio=2.0, num_classes=5
    )


def _tiny_shufflenet() -> nn.Module:
    return torchvision.models.ShuffleNetV2([1, 1, 1], [8, 16, 32, 64, 64], num_classes=5)


@pytest.mark.parametrize("factory", [_tiny_vit, _tiny_shufflenet], ids=["vit", "shufflenet"])
def test_a_supernet_with_frozen_groups_trains_and_every_strategy_answers(factory):
    torch.manual_seed(0)
    sn = Supernet.from_model(factory(), torch.randn(1, 3, 16, 16), bins=4)
    assert sn.space.searchable and bool(sn.frozen) == (factory is _tiny_shufflenet)
    g = torch.Generator().manual_seed(0)
    images, labels = (
        torch.randn(32, 3, 16, 16, generator=g),
        torch.randint(0, 5, (32,), generator=g),
    )
    opt = torch.optim.SGD(sn.parameters(), lr=0.05, momentum=0.9)
    before = {k: v.clone() for k, v in sn.state_dict().items()}
    rng = np.random.default_rng(0)
    sn.train()
    for x, y in zip(images.split(8), labels.split(8), strict=True):  # one epoch, 4 batches
        opt.zero_grad()
        losses = bcnet_step(sn, x, y, sn.space.sample(rng), criterion=nn.CrossEntropyLoss())
        assert all(torch.isfinite(v) for v in losses.values())
        opt.step()
    changed = [k for k, v in sn.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.endswith("weight") for k in changed)

    sn.eval()
    evaluator = SubnetEvaluator(sn, images, labels, images, batch_size=16)
    budgets = resolve_budgets(sn, [0.9])
    for name in list_strategies():
        (result,) = get_strategy(name).search(
            sn, evaluator, budgets=budgets, seed=0, **OPTIONS.get(name, {})
        )
        assert 0 < result.macs <= budgets[0], name
        assert sn.macs(result.widths) == result.macs, name
        sub = sn.extract(result.widths).eval()
        with torch.no_grad(), sn.active(result.widths):
            assert (sub(images) - sn(images)).abs().max().item() <= 1e-5, name


def test_attention_heads_are_whole_units_that_round_to_leaves_alone():
    """``round_to = 8`` rounds channel widths, never a number of heads."""
    sn = Supernet.from_model(_tiny_vit(), torch.randn(1, 3, 16, 16), bins=4, round_to=8)
    assert sn.space["blocks.0.attn:heads"].choices == (1, 2, 3, 4)
    assert all(w % 8 == 0 for w in sn.space["patch_embed.proj"].choices)
    sub = sn.extract({**sn.space.max(), "blocks.1.attn:heads": 1})
    assert (sub.blocks[1].attn.num_heads, sub.blocks[1].attn.qkv.out_features) == (1, 3 * 4)
