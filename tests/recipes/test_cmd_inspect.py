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


def test_inspect_all_reports_each_torchvision_classifier_and_the_coverage(capsys, monkeypatch):
    import torchvision

    names = ["squeezenet1_0", "shufflenet_v2_x0_5", "mobilenet_v2", "no_such_net"]
    monkeypatch.setattr(torchvision.models, "list_models", lambda module=None: names)
    assert main(["inspect", "--all", "--input-size", "64"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5
    by_name = {line.split()[0]: line.split(None, 2)[1:] for line in lines[:4]}
    assert by_name["tv:squeezenet1_0"][0] == "supported"
    assert "fixed where" not in by_name["tv:squeezenet1_0"][1]
    assert by_name["tv:mobilenet_v2"][0] == "supported"
    # its channel shuffles keep the stages' channels at full width; the branches slim
    assert by_name["tv:shufflenet_v2_x0_5"] == [
        "supported",
        "18 searchable groups of 57 (19 fixed where channels mix)",
    ]
    refused, reason = by_name["tv:no_such_net"]
    assert refused == "refused" and "no_such_net" in reason
    assert lines[4] == "coverage: 3 of 4 torchvision classifiers (75%)"


def test_inspect_needs_a_model_or_all_but_not_both(capsys):
    for argv in (["inspect"], ["inspect", "resnet20", "--all"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == ["widthsearch inspect: error: give a MODEL or --all, not both"]
