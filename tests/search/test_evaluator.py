"""The subnet evaluator: recalibrated left/right top-1 on held-out data, cached, BN-safe."""

import pytest
import torch
from widthsearch.search import SubnetEvaluator, build_evaluator
from widthsearch.supernet import CheckpointError
from widthsearch.supernet.bn import recalibrate_bn


def _state(sn):
    return {k: v.clone() for k, v in sn.model.state_dict().items()}


def test_score_is_mean_of_recalibrated_left_and_right_top1(loaded, evaluator):
    sn, _ = loaded
    cfg = sn.space.uniform(0.5)
    left, right = evaluator.sides(cfg)
    assert evaluator.score(cfg) == pytest.approx((left + right) / 2)
    manual = []
    for side in ("left", "right"):
        with torch.no_grad():
            recalibrate_bn(sn, evaluator.calib_batches, cfg=cfg, side=side)
            with sn.active(cfg, side):
                correct = sum(int((sn(x).argmax(1) == y).sum()) for x, y in evaluator.batches)
        manual.append(correct / evaluator.num_images)
        evaluator.restore_bn()
    assert (left, right) == tuple(manual)


def test_sandwich_supernet_is_scored_on_its_left_side_only(loaded):
    """The sandwich rule trains left-aligned subnets only: averaging in the untrained right
    side would rank configs by noise."""
    sn, payload = loaded
    bcnet = build_evaluator(sn, payload)
    sandwich_payload = {
        **payload,
        "recipe": {**payload["recipe"], "train": {"trainer": "sandwich"}},
    }
    sandwich = build_evaluator(sn, sandwich_payload)
    assert sandwich.side_names == ("left",) and bcnet.side_names == ("left", "right")
    cfg = sn.space.uniform(0.5)
    left, _right = bcnet.sides(cfg)
    assert sandwich.sides(cfg) == (left,)
    assert sandwich.score(cfg) == left
    with pytest.raises(ValueError, match="sides"):
        SubnetEvaluator(sn, *bcnet.batches[0], bcnet.calib_batches[0], sides=("middle",))


def test_bn_stats_restored_and_weights_untouched(loaded, evaluator):
    sn, _ = loaded
    before = _state(sn)
    for ratio in (0.25, 0.5, 1.0):
        evaluator.score(sn.space.uniform(ratio))
    evaluator.score(sn.space.sample(0))
    after = sn.model.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
    assert not sn.training  # mode restored (loaded in eval mode)


def test_cache_counters_and_throughput(loaded, evaluator):
    sn, _ = loaded
    cfg = sn.space.uniform(0.75)
    searchable_only = {g.name: cfg[g.name] for g in sn.space.searchable}
    first = evaluator.score(cfg)
    assert evaluator.score(searchable_only) == first  # same key with fixed groups omitted
    assert (evaluator.evaluations, evaluator.calls) == (1, 2)
    assert evaluator.images_seen == 2 * (evaluator.num_images + evaluator.num_calib)
    assert evaluator.images_per_second > 0
    evaluator.clear_cache()
    assert evaluator.score(cfg) == first  # deterministic: fixed batches, same result
    assert evaluator.evaluations == 2
    stats = evaluator.stats()
    assert stats["evaluations"] == 2 and stats["heldout_images"] == 64


def test_scores_held_out_images_from_the_recipe(loaded, loaded_splits, evaluator):
    sn, payload = loaded
    splits = loaded_splits
    heldout = {splits.heldout[i][0].numpy().tobytes() for i in range(len(splits.heldout))}
    images = torch.cat([x for x, _ in evaluator.batches])
    assert len(images) == payload["recipe"]["search"]["heldout_images"] == 64
    assert all(img.numpy().tobytes() in heldout for img in images)
    calib = torch.cat(list(evaluator.calib_batches))
    assert len(calib) == 32 and not any(img.numpy().tobytes() in heldout for img in calib)
    # overrides
    small = build_evaluator(sn, payload, heldout_images=10, calib_batches=2, batch_size=4)
    assert (small.num_images, small.num_calib, small.batch_size) == (10, 8, 4)


def test_needs_recipe_and_valid_inputs(loaded):
    sn, payload = loaded
    with pytest.raises(CheckpointError, match="recipe"):
        build_evaluator(sn, {k: v for k, v in payload.items() if k != "recipe"})
    size = sn.meta["input_size"]
    x = torch.zeros(4, 1, size, size)
    with pytest.raises(ValueError):
        SubnetEvaluator(sn, x, torch.zeros(3, dtype=torch.long), x)
    with pytest.raises(ValueError):
        SubnetEvaluator(sn, x, torch.zeros(4, dtype=torch.long), x[:0])
