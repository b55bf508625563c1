"""Cost-model throughput and supernet build time.

    .venv/bin/python benchmarks/cost_model.py

Prints configs/s of the vectorised cost model on torchvision resnet50 (MACs and params of
100,000 random configs, median of 5 runs) and the time to build the supernet (trace, shape
propagation, groups, cost table) for every model the core is tested on.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import timm
import torch
import torchvision
from widthsearch.supernet import Supernet
from widthsearch.supernet.models import create_model

MODELS = {
    "resnet20": (lambda: create_model("resnet20", num_classes=10, in_chans=1), (1, 1, 28, 28)),
    "resnet56": (lambda: create_model("resnet56", num_classes=10, in_chans=1), (1, 1, 28, 28)),
    **{
        f"tv:{n}": (lambda n=n: torchvision.models.get_model(n, num_classes=1000), (1, 3, 224, 224))
        for n in [
            "resnet18",
            "resnet50",
            "mobilenet_v2",
            "mobilenet_v3_small",
            "efficientnet_b0",
            "regnet_x_400mf",
            "vgg11_bn",
        ]
    },
    **{
        f"timm:{n}": (lambda n=n: timm.create_model(n, num_classes=1000), (1, 3, 224, 224))
        for n in ["resnet18", "mobilenetv2_100", "efficientnet_b0", "mobilenetv3_small_100"]
    },
}


def main() -> None:
    torch.manual_seed(0)
    factory, shape = MODELS["tv:resnet50"]
    sn = Supernet.from_model(factory(), torch.zeros(shape))
    rng = np.random.default_rng(0)
    n = 100_000
    cols = [rng.choice(g.choices, size=n) for g in sn.space.groups]
    widths = np.stack(cols, axis=1)
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        sn.cost.macs(widths)
        sn.cost.params(widths)
        runs.append(time.perf_counter() - start)
    rate = n / statistics.median(runs)
    print(
        f"cost model, tv:resnet50 at 224x224 ({len(sn.space.searchable)} searchable groups): "
        f"{rate:,.0f} configs/s (MACs + params, median of 5 x {n:,} configs)\n"
    )
    print("| model | searchable groups | MACs (224 / 28 px) | build seconds (median of 3) |")
    print("|---|---:|---:|---:|")
    for name, (factory, shape) in MODELS.items():
        times = []
        for _ in range(3):
            model = factory()
            start = time.perf_counter()
            built = Supernet.from_model(model, torch.zeros(shape))
            times.append(time.perf_counter() - start)
        print(
            f"| {name} | {len(built.space.searchable)} | {built.macs() / 1e6:,.1f}M | "
            f"{statistics.median(times):.2f} |"
        )


if __name__ == "__main__":
    main()
