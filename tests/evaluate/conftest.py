"""A tiny trained supernet (resnet20 on 12x12 synthetic images) for the evaluate tests, and a
search JSON written by hand.

Trained by the root conftest's plain loop (``train_tiny_supernet``: full width, then
bilateral random widths) so these tests do not depend on the trainer; saved with
``save_supernet(..., recipe=...)`` as training saves it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from widthsearch.recipes.recipe import load_recipe
from widthsearch.supernet import Supernet
from widthsearch.supernet.checkpoint import load_supernet, save_supernet
from widthsearch.supernet.models import create_model


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """One intra-op thread: on a shared 2-core machine, 2 threads can be 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_recipe(**data: Any) -> dict[str, Any]:
    recipe = load_recipe().to_dict()
    recipe["name"] = "evaluate-test"
    recipe["data"].update(
        name="synthetic", heldout_size=200, train_limit=320, test_limit=200, seed=3, batch_size=64
    )
    recipe["data"].update(data)
    recipe["search"].update(heldout_images=128, calib_batches=2, eval_batch_size=64, seed=0)
    recipe["finetune"].update(epochs=1, lr=0.02)
    recipe["eval"].update(latency_seconds=0.02)
    recipe["run"].update(amp="off", channels_last=False)  # exact fp32 comparisons
    recipe["train"].update(trainer="bcnet", importance="gamma")  # both sides trained
    return recipe


@pytest.fixture(scope="session")
def supernet_path(tmp_path_factory, train_tiny_supernet) -> Path:
    recipe = tiny_recipe()
    d = recipe["data"]
    sn, _ = train_tiny_supernet(
        heldout_size=d["heldout_size"],
        seed=d["seed"],
        train_limit=d["train_limit"],
        bins=4,
        full_steps=30,
        random_steps=12,
    )
    path = tmp_path_factory.mktemp("supernet") / "supernet.pt"
    save_supernet(path, sn, recipe=recipe, epoch=1)
    return path


@pytest.fixture()
def loaded(supernet_path):
    return load_supernet(supernet_path)


def half_config(sn: Supernet, seed: int = 1) -> dict[str, int]:
    """A non-uniform config (random widths), different per seed."""
    return sn.space.sample(np.random.default_rng(seed))


@pytest.fixture()
def config_of():
    """``config_of(sn, seed)``: a random config of ``sn`` (test modules cannot import conftest)."""
    return half_config


@pytest.fixture(scope="session")
def search_path(supernet_path, tmp_path_factory) -> Path:
    """A search JSON by hand with only the keys the README names (as an older or hand-made
    file): uniform and random at 50/75 %."""
    sn, _ = load_supernet(supernet_path)
    full = sn.macs()
    results = []
    for fraction in (0.5, 0.75):
        budget = int(fraction * full)
        uniform = sn.space.uniform(fraction)
        rng = np.random.default_rng(int(fraction * 100))
        while True:
            rand = sn.space.sample(rng)
            if sn.macs(rand) <= budget:
                break
        for strategy, cfg, score in (("uniform", uniform, 0.5), ("random", rand, 0.4)):
            results.append(
                {
                    "strategy": strategy,
                    "budget_macs": budget,
                    "macs": sn.macs(cfg),
                    "params": sn.params(cfg),
                    "score": score,
                    "widths": {k: int(v) for k, v in cfg.items()},
                    "evaluations": 1,
                    "seconds": 0.1,
                }
            )
    doc = {
        "supernet": str(supernet_path),
        "model": "resnet20",
        "full_macs": full,
        "results": results,
    }
    path = tmp_path_factory.mktemp("search") / "search.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture(scope="session")
def subnet_path(supernet_path, search_path, tmp_path_factory) -> Path:
    """The random strategy's 50 % subnet, extracted with every inheritance candidate."""
    from widthsearch.evaluate import extract_subnet

    out = tmp_path_factory.mktemp("subnet") / "subnet.pt"
    extract_subnet(supernet_path, search=search_path, strategy="random", budget="0.5", out=out)
    return out


@pytest.fixture(scope="session")
def timm_subnet_path(tmp_path_factory) -> Path:
    """An untrained timm:resnet18 supernet (16x16 inputs) and its extracted 50 % subnet.

    A model whose class is not in widthsearch: its subnet file must load without widthsearch.
    """
    from widthsearch.evaluate import extract_subnet

    torch.manual_seed(0)
    name = "timm:resnet18"
    model = create_model(name, num_classes=10, in_chans=1)
    meta = {"model": name, "num_classes": 10, "in_chans": 1, "input_size": 16}
    sn = Supernet.from_model(model, torch.zeros(1, 1, 16, 16), bins=4, meta=meta)
    folder = tmp_path_factory.mktemp("timm")
    save_supernet(folder / "supernet.pt", sn, recipe=tiny_recipe())
    out = folder / "subnet.pt"
    extract_subnet(
        folder / "supernet.pt",
        widths=half_config(sn, seed=3),
        out=out,
        heldout_images=32,
        calib_batches=1,
        batch_size=32,
    )
    return out
