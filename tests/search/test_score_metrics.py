"""Evaluator metrics: top-1, cross-entropy and distillation loss, each equal to the value
computed by hand on the same recalibrated subnet and images; kd needs a trained network."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from widthsearch.search import SubnetEvaluator, build_evaluator
from widthsearch.supernet.bn import recalibrate_bn
from widthsearch.supernet.errors import CheckpointError
from widthsearch.supernet.train import preserved_state


def _by_hand(sn, evaluator, cfg, side, per_batch) -> float:
    with preserved_state(sn):
        recalibrate_bn(sn, evaluator.calib_batches, cfg=cfg, side=side)
        total = 0.0
        with torch.no_grad(), sn.active(cfg, side):
            for i, (x, y) in enumerate(evaluator.batches):
                total += per_batch(i, sn(x), y)
    return total / evaluator.num_images


@pytest.mark.parametrize("metric", ["top1", "ce", "kd"])
def test_metric_equals_the_hand_computed_value(loaded, metric):
    sn, payload = loaded
    teacher = copy.deepcopy(sn.extract(sn.space.max())) if metric == "kd" else None
    base = build_evaluator(sn, payload, heldout_images=300)
    images = torch.cat([x for x, _ in base.batches])
    labels = torch.cat([y for _, y in base.batches])
    calib = torch.cat(list(base.calib_batches))
    logits = None
    if teacher is not None:
        with torch.no_grad():
            logits = teacher.eval()(images)
    evaluator = SubnetEvaluator(
        sn, images, labels, calib, batch_size=base.batch_size, metric=metric, teacher_logits=logits
    )
    t_batches = logits.split(base.batch_size) if logits is not None else None

    def per_batch(i, out, y):
        if metric == "top1":
            return float((out.argmax(1) == y).sum())
        if metric == "ce":
            return -float(F.cross_entropy(out, y, reduction="sum"))
        t = F.log_softmax(t_batches[i], 1)
        return -float((t.exp() * (t - F.log_softmax(out, 1))).sum())

    cfg = sn.space.uniform(0.5)
    expected = [_by_hand(sn, evaluator, cfg, side, per_batch) for side in ("left", "right")]
    got = evaluator.sides(cfg)
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert evaluator.score(cfg) == pytest.approx(sum(expected) / 2, rel=1e-5, abs=1e-6)
    if metric != "top1":
        assert all(v < 0 for v in got)  # losses, negated: higher is better
    if metric != "kd":  # (this teacher's BN stats mix every width: no ranking to expect)
        assert evaluator.score(sn.space.max()) > evaluator.score(sn.space.min())


def test_kd_needs_a_trained_network(loaded):
    sn, payload = loaded
    assert "teacher_state_dict" not in payload  # trained from scratch
    with pytest.raises(CheckpointError, match="warm-started"):
        build_evaluator(sn, payload, metric="kd")


def test_unknown_metric_is_rejected(loaded):
    sn, payload = loaded
    with pytest.raises(ValueError, match="metric"):
        build_evaluator(sn, payload, metric="auc")


def test_relax_fits_on_images_disjoint_from_the_scored_ones(loaded, monkeypatch):
    from widthsearch.search import relax as relax_module

    sn, payload = loaded
    evaluator = build_evaluator(sn, payload, heldout_images=120)
    scored = torch.cat([x for x, _ in evaluator.batches]).flatten(1)
    fit = torch.cat([x for x, _ in evaluator.fit_batches]).flatten(1)
    assert len(scored) == 120 and len(fit) == 80  # the rest of the 200 held-out images
    # no fitting image is a scored image
    assert not (torch.cdist(fit, scored).min(dim=1).values < 1e-6).any()
    seen = {}
    original = relax_module._LogitTrainer.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen["images"] = self.images.flatten(1)

    monkeypatch.setattr(relax_module._LogitTrainer, "__init__", spy)
    from widthsearch.search import get_strategy, resolve_budgets

    budgets = resolve_budgets(sn, [0.5])
    get_strategy("relax").search(sn, evaluator, budgets=budgets, seed=0, steps=2)
    assert torch.equal(seen["images"], fit)
