"""One builder of supernets: a file's meta rebuilds the architecture that was trained."""

from __future__ import annotations

import pytest
import torch
from widthsearch.recipes.recipe import load_recipe
from widthsearch.supernet import CheckpointError, SupernetSpec
from widthsearch.supernet.checkpoint import build_supernet, load_supernet
from widthsearch.supernet.train import build_training


def test_training_and_loading_build_the_same_supernet(train_tiny, tmp_path):
    recipe = load_recipe(str(train_tiny))
    recipe.space.bins, recipe.space.round_to = 6, 2
    _, trained, _ = build_training(recipe, download=False)
    spec = SupernetSpec.from_meta(trained.meta)
    assert spec == SupernetSpec("resnet20", 10, 1, 16, bins=6, min_bins=1, round_to=2)
    assert spec.to_meta() == trained.meta
    rebuilt = build_supernet(trained.meta)
    assert rebuilt.meta == trained.meta and rebuilt.space.max() == trained.space.max()
    ours, theirs = trained.model.state_dict(), rebuilt.model.state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    assert [g.choices for g in rebuilt.space.groups] == [g.choices for g in trained.space.groups]
    torch.manual_seed(0)
    a = spec.build()
    torch.manual_seed(0)
    b = spec.build()
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


def test_a_meta_that_cannot_rebuild_a_supernet_is_one_clear_error(tmp_path):
    meta = SupernetSpec("resnet20", 10, 1, 16).to_meta()
    with pytest.raises(CheckpointError, match="meta has no 'round_to': not a supernet file"):
        SupernetSpec.from_meta({k: v for k, v in meta.items() if k != "round_to"}, where="x.pt")
    with pytest.raises(CheckpointError, match=r"x\.pt: meta bins='many' is not valid"):
        SupernetSpec.from_meta({**meta, "bins": "many"}, where="x.pt")


def test_loading_a_file_uses_the_spec(tmp_path):
    from widthsearch.supernet.checkpoint import save_supernet

    sn = SupernetSpec("resnet20", 10, 1, 12, bins=4).build()
    save_supernet(tmp_path / "s.pt", sn)
    loaded, payload = load_supernet(tmp_path / "s.pt")
    assert SupernetSpec.from_meta(payload["meta"]) == SupernetSpec.from_meta(sn.meta)
    for key, value in sn.model.state_dict().items():
        assert torch.equal(value, loaded.model.state_dict()[key]), key
