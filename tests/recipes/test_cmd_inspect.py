"""`widthsearch inspect` through the real console script and through main()."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from widthsearch.recipes.cli import main

SCRIPT = Path(sys.executable).with_name("widthsearch")


def test_inspect_lists_groups_and_exact_totals(capsys):
    assert main(["inspect", "resnet20"]) == 0
    out = capsys.readouterr().out
    assert "layer1.0.conv1" in out and "fixed" in out
    # resnet20 on 1x28x28, 10 classes: MACs and params the cost model and torch agree on
    import torch
    from widthsearch.supernet import Supernet
    from widthsearch.supernet.models import create_model

    model = create_model("resnet20", num_classes=10, in_chans=1)
    sn = Supernet.from_model(model, torch.zeros(1, 1, 28, 28))
    assert f"MACs   {sn.macs()}" in out
    # ... and what torch counts on the model itself
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(torch.zeros(1, 1, 28, 28))
    assert f"MACs   {counter.get_total_flops() // 2}" in out
    assert f"params {sum(p.numel() for p in model.parameters())}" in out


def test_inspect_bad_model_is_one_clear_line():
    proc = subprocess.run(
        [str(SCRIPT), "inspect", "resnet21"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "resnet21" in lines[0] and "Traceback" not in proc.stderr


def test_cli_defaults_openmp_to_passive_waits_but_respects_the_user():
    """Spinning OpenMP workers collapse on shared cores; the user's own setting wins."""
    code = "import os, widthsearch.recipes.cli; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    unset = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert unset.stdout.strip() == "PASSIVE", unset.stderr
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    user = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert user.stdout.strip() == "ACTIVE", user.stderr


def test_inspect_all_reports_each_classifier_and_the_coverage(capsys, monkeypatch):
    import torchvision
    from widthsearch.recipes import _cmd_inspect

    names = ["squeezenet1_0", "shufflenet_v2_x0_5", "mobilenet_v2", "no_such_net"]
    monkeypatch.setattr(torchvision.models, "list_models", lambda module=None: names)
    monkeypatch.setattr(_cmd_inspect, "TIMM_FAMILIES", ("ghostnet_100",))
    assert main(["inspect", "--all", "--input-size", "64"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 7
    by_name = {line.split()[0]: line.split(None, 2)[1:] for line in lines if ":" in line.split()[0]}
    assert by_name["tv:squeezenet1_0"] == ["supported", "25 searchable groups of 27"]
    assert by_name["tv:mobilenet_v2"][0] == "supported"
    # its channel shuffles keep the stages' channels at full width; the branches slim
    assert by_name["tv:shufflenet_v2_x0_5"] == [
        "supported",
        "18 searchable groups of 57, 19 fixed where channels mix",
    ]
    refused, reason = by_name["tv:no_such_net"]
    assert refused == "refused" and "no_such_net" in reason
    assert lines[4] == "coverage: 3 of 4 torchvision classifiers (75%)"
    assert by_name["timm:ghostnet_100"][0] == "supported"
    assert lines[6] == "coverage: 1 of 1 timm families (100%)"


def test_inspect_all_says_when_a_subnet_is_not_exact(monkeypatch):
    from widthsearch.recipes import _cmd_inspect

    sn, example = _cmd_inspect._supernet("tv:mobilenet_v2", _args(input_size=32))
    assert _cmd_inspect._inexact(sn, example) == ""
    monkeypatch.setattr(type(sn), "macs", lambda self, cfg=None: 7)
    assert _cmd_inspect._inexact(sn, example).startswith(": MACs 7 != counted ")


def _args(**kwargs):
    import argparse

    base = dict(num_classes=10, in_chans=3, input_size=32, bins=8, min_bins=1, round_to=1)
    return argparse.Namespace(**{**base, **kwargs})


def test_inspect_needs_a_model_or_all_but_not_both(capsys):
    for argv in (["inspect"], ["inspect", "resnet20", "--all"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == ["widthsearch inspect: error: give a MODEL or --all, not both"]
