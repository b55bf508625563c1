"""The ranking benchmark's statistics and config strata (benchmarks/ranking.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from widthsearch.recipes.recipe import load_recipe
from widthsearch.supernet import Supernet, create_model
from widthsearch.supernet.train import pretrain_network, train_supernet

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import ranking
import ranking_stats


def test_bootstrap_gives_the_rank_correlations_and_intervals_around_them():
    truth = np.linspace(0.80, 0.93, 20)
    same = ranking_stats.bootstrap(truth * 2 + 1, truth, rounds=200)
    assert same["kendall_tau"] == pytest.approx(1.0) and same["spearman_rho"] == pytest.approx(1)
    assert same["kendall_ci"] == pytest.approx([1.0, 1.0])
    reverse = ranking_stats.bootstrap(-truth, truth, rounds=200)
    assert reverse["kendall_tau"] == pytest.approx(-1.0)
    rng = np.random.default_rng(1)
    noisy = truth + rng.normal(0, 0.03, truth.size)
    result = ranking_stats.bootstrap(noisy, truth, rounds=500)
    assert result["kendall_tau"] == pytest.approx(stats.kendalltau(noisy, truth).statistic)
    low, high = result["kendall_ci"]
    assert low < result["kendall_tau"] < high and high - low > 0.1  # 20 configs: wide


def test_the_paired_gain_over_a_baseline_uses_the_same_resamples():
    """tau minus the baseline's tau per resample: a perfect score beats a noisy baseline with
    an interval above zero even where the two tau intervals would overlap; the baseline
    against itself gains exactly nothing."""
    truth = np.linspace(0.80, 0.93, 20)
    noisy = truth + np.random.default_rng(1).normal(0, 0.03, truth.size)
    itself = ranking_stats.bootstrap(noisy, truth, rounds=300, baseline=noisy)
    assert itself["tau_gain"] == 0 and itself["tau_gain_ci"] == [0.0, 0.0]
    better = ranking_stats.bootstrap(truth, truth, rounds=300, baseline=noisy)
    assert better["tau_gain"] == pytest.approx(1 - stats.kendalltau(noisy, truth).statistic)
    assert better["tau_gain_ci"][0] > 0
    assert "tau_gain" not in ranking_stats.bootstrap(truth, truth, rounds=10)


def test_configs_cover_the_macs_range_one_per_stratum():
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_chans=1)
    sn = Supernet.from_model(model, torch.zeros(1, 1, 8, 8), bins=8)
    configs = ranking.stratified_configs(sn, 10, seed=3)
    fractions = [c["macs"] / sn.macs() for c in configs]
    assert [c["macs"] for c in configs] == [sn.macs(c["widths"]) for c in configs]
    edges = np.linspace(ranking.LOW, ranking.HIGH, 11)
    hits = [int(np.searchsorted(edges, f, side="right")) - 1 for f in fractions]
    assert len(set(hits)) >= 9, fractions  # nearly every stratum has its own config
    assert max(fractions) > 0.8 and min(fractions) < 0.2
    assert configs == ranking.stratified_configs(sn, 10, seed=3)  # seeded


def test_the_ordered_trained_score_slices_the_channels_the_warm_supernet_slices(
    train_tiny, tmp_path, one_thread
):
    """A warm-started supernet that has not moved (lr 0) is its trained network with the
    channels arranged by importance: scored config by config, the ``trained-ordered``
    predictor must give exactly the supernet's own scores."""
    recipe = load_recipe(str(train_tiny))
    recipe.data.train_limit, recipe.pretrain.epochs = 320, 1
    pretrain_network(recipe, out_dir=tmp_path, progress=False, log=print)
    recipe.train.epochs, recipe.train.lr = 1, 0.0
    train_supernet(
        recipe, out_dir=tmp_path / "sn", init=str(tmp_path / "full.pt"), progress=False, log=print
    )
    path = str(tmp_path / "sn" / "supernet.pt")
    args = ranking.parse_args(
        ["--supernet", f"warm={path}", "--configs", "5", "--out", str(tmp_path / "r")]
    )
    bench = ranking.Ranking(args)
    configs = bench.configs_cell()
    own = bench.score_cell(path, "top1", 100, configs)
    ordered = bench.trained_cell(100, configs, ordered=True)
    assert ordered["channel_order"] == "ends" and ordered["scores"] == own["scores"]
    assert bench.trained_cell(100, configs)["scores"] != own["scores"]  # the trained order


def test_a_truth_cell_claimed_by_a_live_worker_is_left_to_it(tmp_path):
    """Two processes on one ``--out`` share a seed's configs: a cell held by another live
    process is skipped; one whose holder has exited is taken over."""
    args = ranking.parse_args(["--supernet", "warm=x.pt", "--out", str(tmp_path)])
    worker = ranking.Ranking(args)
    assert worker.claim("truth-finetune-00-s0") and worker.claim("truth-finetune-00-s0")
    held = tmp_path / "work" / "claims" / "truth-finetune-01-s0.pid"
    held.write_text("1")  # init: alive for as long as the machine is
    assert not worker.claim("truth-finetune-01-s0")
    held.write_text("999999999")  # no such process
    assert worker.claim("truth-finetune-01-s0") and held.read_text() == str(os.getpid())


def test_partial_tau_keeps_only_what_a_score_knows_beyond_macs():
    """Truth = a MACs trend + a shape effect. A score that knows only MACs has no partial tau
    left; one that knows the shape effect keeps a high one although its plain tau is lower;
    MACs against itself is undefined and the row shows none."""
    rng = np.random.default_rng(0)
    macs = np.linspace(1, 30, 30)
    shape = rng.normal(0, 1, 30)
    truth = np.log(macs) + 0.3 * shape
    knows_macs = macs + rng.normal(0, 3, 30)  # MACs, jittered: no shape information
    knows_shape = 0.5 * np.log(macs) + shape
    plain = {
        name: stats.kendalltau(x, truth).statistic
        for name, x in (("macs", knows_macs), ("shape", knows_shape))
    }
    assert plain["macs"] > plain["shape"]  # plain tau prefers the one that knows MACs
    low, high = ranking_stats.bootstrap(knows_macs, truth, rounds=300, baseline=macs)["partial_ci"]
    assert low < 0 < high
    assert ranking_stats.partial_tau(knows_shape, truth, macs) > 0.3
    assert np.isnan(ranking_stats.partial_tau(macs**2, truth, macs))  # MACs in another unit
    row = ranking_stats.bootstrap(knows_shape, truth, rounds=300, baseline=macs)
    assert row["partial_tau"] == pytest.approx(ranking_stats.partial_tau(knows_shape, truth, macs))
    assert row["partial_ci"][0] > 0  # outside zero: it knows something MACs do not
    assert "partial_tau" not in ranking_stats.bootstrap(macs, truth, rounds=50, baseline=macs)


def test_seed_agreement_compares_the_configs_both_seeds_have():
    macs = [1.0, 2.0, 3.0, 4.0, 5.0]
    runs = {0: {0: 0.80, 1: 0.85, 2: 0.84, 3: 0.90, 4: 0.91}, 1: {0: 0.81, 1: 0.84, 3: 0.92}}
    agree = ranking_stats.seed_agreement(runs, macs)
    assert agree["seeds"] == [0, 1] and agree["configs"] == 3  # configs 0, 1, 3
    assert agree["kendall_tau"] == pytest.approx(1.0)
    assert agree["max_gap"] == pytest.approx(0.02) and agree["median_gap"] == pytest.approx(0.01)
    assert ranking_stats.seed_agreement({0: runs[0]}, macs) == {}  # one seed: nothing to compare


def test_configs_at_one_budget_lie_in_its_window_and_are_distinct():
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_chans=1)
    sn = Supernet.from_model(model, torch.zeros(1, 1, 8, 8), bins=8)
    full = sn.macs()
    configs = ranking.budget_configs(sn, 12, fraction=0.25, window=0.97, seed=3)
    assert len(configs) == 12
    assert all(0.97 * 0.25 * full <= c["macs"] <= 0.25 * full for c in configs)
    assert [c["macs"] for c in configs] == [sn.macs(c["widths"]) for c in configs]
    assert len({tuple(sorted(c["widths"].items())) for c in configs}) == 12
    assert configs == ranking.budget_configs(sn, 12, fraction=0.25, window=0.97, seed=3)
    with pytest.raises(ValueError, match="widen --window"):
        ranking.budget_configs(sn, 12, fraction=0.25, window=0.9999, seed=3, draws=200)


def test_a_folder_of_stratified_configs_refuses_a_budget_run(tmp_path):
    """Configs drawn one way are never mixed with truth cells of configs drawn another."""
    args = ranking.parse_args(["--supernet", "warm=x.pt", "--out", str(tmp_path)])
    bench = ranking.Ranking(args)
    bench.cells.run("configs", lambda: {"at_budget": None, "configs": []})
    at_budget = ranking.parse_args(
        ["--supernet", "warm=x.pt", "--out", str(tmp_path), "--at-budget", "0.25"]
    )
    with pytest.raises(SystemExit, match="use another --out"):
        ranking.Ranking(at_budget).run()
    with pytest.raises(SystemExit):
        ranking.parse_args(["--supernet", "warm=x.pt", "--at-budget", "1.5"])
