"""Data-driven (Taylor) channel importance for the warm start: it sees what the network
uses, where |BN gamma| only hints at it, and reordering by it keeps the function."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from widthsearch.recipes.recipe import load_recipe
from widthsearch.supernet import Supernet, create_model
from widthsearch.supernet.checkpoint import load_supernet
from widthsearch.supernet.recipe import validate
from widthsearch.supernet.train import pretrain_network, train_supernet
from widthsearch.supernet.warmstart import channel_importance, reorder_channels

pytestmark = pytest.mark.usefixtures("one_thread")


def _supernet(seed: int = 0) -> Supernet:
    torch.manual_seed(seed)
    model = create_model("resnet20", num_classes=10, in_chans=1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
    return Supernet.from_model(model, torch.zeros(1, 1, 16, 16), bins=8).eval()


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 1, 16, 16, generator=g), torch.randint(0, 10, (16,), generator=g))]


def test_taylor_sees_a_channel_nothing_reads_where_gamma_ranks_it_first():
    sn = _supernet()
    block = sn.model.layer1[0]
    group = "layer1.0.conv1"  # the block's inner channels: conv1 -> bn1 -> conv2
    with torch.no_grad():
        block.bn1.weight[5] = 10.0  # the largest gamma of its group
        block.conv2.weight[:, 5] = 0.0  # but the next conv ignores the channel
    by_gamma = channel_importance(sn)[group]
    by_taylor = channel_importance(sn, batches=_batches())[group]
    assert int(np.argmax(by_gamma)) == 5
    assert by_taylor[5] == 0.0 and by_taylor.max() > 0
    assert int(np.argmin(by_taylor)) == 5


def test_reordering_by_taylor_importance_keeps_the_function_and_sorts_it():
    sn = _supernet(3)
    reference = copy.deepcopy(sn.model)
    batches = _batches()
    reorder_channels(sn, "front", batches=batches)
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(sn(x), reference(x), atol=1e-5, rtol=1e-5)
    for name, values in channel_importance(sn, batches=batches).items():
        assert np.all(np.diff(values) <= 1e-9 * max(values.max(), 1e-30)), name
    assert not sn.model.training  # left in the mode it was in
    assert all(p.grad is None for p in sn.model.parameters())


def test_the_warm_start_records_the_importance_it_used(train_tiny, tmp_path):
    recipe = load_recipe(str(train_tiny))
    recipe.data.train_limit = 128
    recipe.pretrain.epochs = 1
    recipe.train.init = "pretrain"
    recipe.train.epochs = 0
    recipe.train.importance = "taylor"
    recipe.train.importance_batches = 2
    pretrain_network(recipe, out_dir=tmp_path, progress=False, log=lambda line: None)
    result = train_supernet(recipe, out_dir=tmp_path, progress=False, log=lambda line: None)
    _, payload = load_supernet(result.checkpoint)
    assert payload["init"]["importance"] == "taylor"
    assert payload["init"]["channel_order"] == "ends"  # auto, for BCNet's two sides
    recipe.train.importance = "hessian"
    with pytest.raises(ValueError, match="importance must be 'gamma' or 'taylor'"):
        validate(recipe)


def test_reordering_a_vit_moves_whole_heads_and_keeps_the_function():
    """Heads (ranked by the L1 norm of their q, k and v rows), the embedding (its class
    token and position embedding with it) and the MLPs are permuted together: the network
    computes the same, and each group is then sorted by its importance."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(
        img_size=16, patch_size=8, embed_dim=16, depth=2, num_heads=4, num_classes=5
    ).eval()
    with torch.no_grad():
        model.cls_token.normal_()
        model.pos_embed.normal_()
    sn = Supernet.from_model(model, torch.zeros(1, 3, 16, 16)).eval()
    reference = copy.deepcopy(sn.model)
    batches = [(torch.randn(8, 3, 16, 16), torch.randint(0, 5, (8,)))]
    perms = reorder_channels(sn, "front", batches=batches)
    assert sorted(perms["blocks.0.attn:heads"]) == [0, 1, 2, 3]
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(sn(x), reference(x), atol=1e-5, rtol=1e-5)
    for name, values in channel_importance(sn, batches=batches).items():
        assert np.all(np.diff(values) <= 1e-9 * max(values.max(), 1e-30)), name
