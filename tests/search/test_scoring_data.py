"""One builder of scoring images: search and weight inheritance score the same images the
same way, at the model's input size, on the sides the supernet trained."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from widthsearch.evaluate import extract_subnet
from widthsearch.search import ScoringSizes, build_evaluator, scoring_data
from widthsearch.search import scoring as scoring_mod
from widthsearch.supernet import DataError
from widthsearch.supernet.recipe import SearchSection


def test_search_and_inheritance_score_the_same_images_and_agree(loaded):
    sn, payload = loaded
    evaluator = build_evaluator(sn, payload)
    data = scoring_data(payload, sn.meta, where="extract")
    assert len(evaluator.batches) == len(data.heldout_batches) > 0
    for (x, y), (xd, yd) in zip(evaluator.batches, data.heldout_batches, strict=True):
        assert torch.equal(x, xd) and torch.equal(y, yd)
    for c, cd in zip(evaluator.calib_batches, data.calib_batches, strict=True):
        assert torch.equal(c, cd)

    # a config's subnet scores the same in the search and as an inheritance candidate
    cfg = sn.space.uniform(0.5)
    left, right = evaluator.sides(cfg)
    evaluator.restore_bn()
    result = extract_subnet((sn, payload), widths=cfg, candidates=["left", "right"], data=data)
    assert result["inheritance"]["scores"] == {"left": left, "right": right}


def test_fit_images_are_disjoint_from_the_scored_ones(loaded):
    sn, payload = loaded
    sizes = ScoringSizes(heldout_images=64, calib_batches=1, batch_size=32, seed=5)
    data = scoring_data(payload, sn.meta, sizes=sizes, fit=True)
    assert data.fit is not None and len(data.fit[0]) == 64 == len(data.images)
    scored = {tuple(x.flatten().tolist()) for x in data.images}
    assert not any(tuple(x.flatten().tolist()) in scored for x in data.fit[0])
    assert scoring_data(payload, sn.meta, sizes=sizes).fit is None  # only when asked for


def test_sandwich_supernet_inherits_without_the_untrained_right_side(loaded):
    sn, payload = loaded
    sandwich = {**payload, "recipe": {**payload["recipe"], "train": {"trainer": "sandwich"}}}
    data = scoring_data(sandwich, sn.meta)
    assert data.sides == ("left",)
    assert scoring_data(payload, sn.meta).sides == ("left", "right")
    result = extract_subnet((sn, sandwich), widths=sn.space.uniform(0.5))
    assert "right" not in result["inheritance"]["scores"]
    assert set(result["inheritance"]["scores"]) == {"left", "l1", "bn"}


def test_images_are_resized_to_the_model_input(loaded, monkeypatch):
    """A model trained at another size than the data's (``[model].input_size``) is scored at
    its own size, as training fed it."""
    sn, payload = loaded
    real_get_data = scoring_mod.get_data
    data_size = sn.meta["input_size"]

    def data_at_its_own_size(name, **options):
        return real_get_data(name, **{**options, "synthetic_input_size": data_size})

    monkeypatch.setattr(scoring_mod, "get_data", data_at_its_own_size)
    plain = scoring_data(payload, sn.meta)
    bigger = scoring_data(payload, {**sn.meta, "input_size": data_size + 4})
    assert plain.images.shape[-1] == data_size
    assert bigger.images.shape[-2:] == (data_size + 4, data_size + 4)
    expected = F.interpolate(
        plain.images, size=(data_size + 4,) * 2, mode="bilinear", align_corners=False
    )
    torch.testing.assert_close(bigger.images, expected, rtol=0, atol=0)
    assert bigger.calib.shape[-1] == data_size + 4 and torch.equal(bigger.labels, plain.labels)


def test_sizes_come_from_the_recipe_unless_given(loaded):
    _, payload = loaded
    search = payload["recipe"]["search"]
    sizes = ScoringSizes.from_recipe(payload["recipe"])
    assert (sizes.heldout_images, sizes.calib_batches, sizes.batch_size) == (
        search["heldout_images"],
        search["calib_batches"],
        search["eval_batch_size"],
    )
    assert ScoringSizes.from_recipe(payload["recipe"], heldout_images=7).heldout_images == 7
    defaults = SearchSection()  # no recipe: the recipe's defaults, held once
    assert ScoringSizes.from_recipe({}) == ScoringSizes(
        defaults.heldout_images, defaults.calib_batches, defaults.eval_batch_size, defaults.seed
    )
    with pytest.raises(ValueError, match="calib_batches must be >= 1"):
        ScoringSizes.from_recipe(payload["recipe"], calib_batches=0)


def test_no_heldout_split_is_one_clear_error(loaded):
    sn, payload = loaded
    none_held = {
        **payload,
        "recipe": {**payload["recipe"], "data": {**payload["recipe"]["data"], "heldout_size": 0}},
    }
    with pytest.raises(DataError, match="heldout_size=0"):
        scoring_data(none_held, sn.meta)
