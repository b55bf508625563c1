"""`widthsearch finetune`: output format and history, distillation, exact resume, errors."""

from __future__ import annotations

import json

import pytest
import torch
from widthsearch.evaluate import distill_loss, finetune_paths, finetune_subnet, read_subnet
from widthsearch.recipes.cli import main


def test_finetune_cli_with_teacher_writes_subnet_format_plus_history(
    subnet_path, supernet_path, tmp_path
):
    out = tmp_path / "ft.pt"
    argv = ["finetune", str(subnet_path), "--out", str(out), "--teacher", str(supernet_path)]
    assert main([*argv, "--epochs", "1", "--train-limit", "256", "--lr", "0.01"]) == 0
    before, after = read_subnet(subnet_path), read_subnet(out)
    for key in ("widths", "inheritance", "meta", "macs", "params", "supernet", "strategy"):
        assert after[key] == before[key], key
    assert after["format"] == "widthsearch.subnet"
    ft = after["finetune"]
    assert ft["epochs"] == 1 and ft["lr"] == 0.01 and ft["teacher"] == str(supernet_path)
    (entry,) = ft["history"]
    assert entry["epoch"] == 1 and entry["images"] == 256 and entry["kd"] is not None
    assert entry["loss"] == pytest.approx(0.5 * entry["ce"] + 0.5 * entry["kd"], rel=1e-4)
    # the weights moved, the architecture did not
    changed = [
        k
        for k, v in after["state_dict"].items()
        if v.is_floating_point() and not torch.equal(v, before["state_dict"][k])
    ]
    assert changed and after["state_dict"].keys() == before["state_dict"].keys()
    _, ckpt, log = finetune_paths(out)
    assert not ckpt.exists()  # removed once the output is written
    assert [json.loads(line)["epoch"] for line in log.read_text().splitlines()] == [1]


def test_resumed_finetune_equals_an_uninterrupted_one(subnet_path, tmp_path):
    opts = {"epochs": 2, "train_limit": 192, "batch_size": 64, "eval_images": 0, "log": None}
    full = finetune_subnet(subnet_path, out=tmp_path / "a.pt", **opts)
    partial = finetune_subnet(subnet_path, out=tmp_path / "b.pt", stop_after=1, **opts)
    assert len(partial["finetune"]["history"]) == 1 and not (tmp_path / "b.pt").exists()
    assert finetune_paths(tmp_path / "b.pt")[1].exists()
    resumed = finetune_subnet(subnet_path, out=tmp_path / "b.pt", resume=True, **opts)
    assert (tmp_path / "b.pt").exists()
    for key, value in full["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    losses = [e["loss"] for e in resumed["finetune"]["history"]]
    assert losses == [e["loss"] for e in full["finetune"]["history"]]


def test_resume_errors(subnet_path, tmp_path, capsys):
    out = tmp_path / "c.pt"
    assert main(["finetune", str(subnet_path), "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing to resume" in err[0]
    finetune_subnet(subnet_path, out=out, epochs=2, train_limit=64, stop_after=1, log=None)
    argv = ["finetune", str(subnet_path), "--out", str(out), "--resume", "--epochs", "3"]
    assert main([*argv, "--train-limit", "64"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "epochs=2" in err[0] and not out.exists()


def test_finetune_bad_inputs(subnet_path, supernet_path, tmp_path, capsys):
    other = tmp_path / "other.pt"
    torch.save({"format": "something.else"}, other)
    cases = [
        (["finetune", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "x.pt")], "no such file"),
        (
            ["finetune", str(supernet_path), "--out", str(tmp_path / "x.pt")],
            "expected 'widthsearch.subnet'",
        ),
        (
            [
                "finetune",
                str(subnet_path),
                "--out",
                str(tmp_path / "x.pt"),
                "--teacher",
                str(other),
            ],
            "expected 'widthsearch.full' or 'widthsearch.supernet'",
        ),
        (
            ["finetune", str(subnet_path), "--out", str(tmp_path / "x.pt"), "--epochs", "-1"],
            "--epochs must be >= 0",
        ),
        (["finetune", str(subnet_path), "--out", str(tmp_path)], "is a directory"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)
        assert not (tmp_path / "x.pt").exists()


def test_distill_loss_is_zero_for_equal_logits_and_scales_with_t_squared():
    logits = torch.randn(5, 10, generator=torch.Generator().manual_seed(0))
    assert distill_loss(logits, logits).item() == pytest.approx(0.0, abs=1e-6)
    other = logits.flip(1)
    kl = torch.nn.functional.kl_div(
        torch.log_softmax(logits / 2, 1), torch.softmax(other / 2, 1), reduction="batchmean"
    )
    assert distill_loss(logits, other, temperature=2).item() == pytest.approx(4 * kl.item())


def test_zero_epochs_writes_the_subnet_unchanged(subnet_path, tmp_path):
    out = tmp_path / "zero.pt"
    result = finetune_subnet(subnet_path, out=out, epochs=0, log=None)
    assert result["finetune"]["history"] == [] and out.is_file()
    before, after = read_subnet(subnet_path), read_subnet(out)
    for key, value in before["state_dict"].items():
        assert torch.equal(value, after["state_dict"][key])


def test_teacher_bn_is_recalibrated_before_distilling(
    subnet_path, supernet_path, tmp_path, monkeypatch
):
    """The supernet's running BN stats mix all widths; the full-width teacher needs its own."""
    import widthsearch.evaluate.finetune as ft
    from widthsearch.supernet.checkpoint import load_supernet

    calls = []

    def spy(model, batches, **kw):
        calls.append((model, len(batches)))
        return real(model, batches, **kw)

    real = ft.recalibrate_bn
    monkeypatch.setattr(ft, "recalibrate_bn", spy)
    finetune_subnet(
        subnet_path, out=tmp_path / "t.pt", teacher=supernet_path, train_limit=64, log=None
    )
    ((teacher, batches),) = calls
    sn, _ = load_supernet(supernet_path)
    assert batches >= 1 and type(teacher) is type(sn.model)
    assert sum(p.numel() for p in teacher.parameters()) == sn.params()
    stored = [m.running_mean for m in sn.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    fresh = [m.running_mean for m in teacher.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert not all(torch.equal(a, b) for a, b in zip(stored, fresh, strict=True))


def test_diverging_finetune_stops_with_one_line_and_writes_nothing(subnet_path, tmp_path, capsys):
    out = tmp_path / "nan.pt"
    argv = ["finetune", str(subnet_path), "--out", str(out), "--epochs", "1", "--lr", "1e30"]
    assert main([*argv, "--train-limit", "256"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "diverged" in err[0] and "fine-tuning epoch 1" in err[0], err
    assert "try a smaller --lr" in err[0]
    assert not out.exists() and not finetune_paths(out)[1].exists()


def test_finetune_lr_follows_the_shared_cosine_schedule(subnet_path, tmp_path):
    """Cosine to zero over all optimiser steps, no warm-up: the supernet trainer's schedule."""
    from widthsearch.supernet.trainer import cosine_schedule

    opts = {"train_limit": 256, "batch_size": 64, "eval_images": 0, "log": None}
    result = finetune_subnet(subnet_path, out=tmp_path / "s.pt", epochs=2, lr=0.1, **opts)
    lrs = [entry["lr"] for entry in result["finetune"]["history"]]
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    schedule = cosine_schedule(opt, total_steps=8)  # 2 epochs of 4 batches
    expected = []
    for step in range(8):
        opt.step()
        schedule.step()
        if step % 4 == 3:
            expected.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx(expected) and lrs[0] == pytest.approx(0.05) and lrs[1] == 0


def test_distillation_term_is_kl_to_the_teachers_logits_on_the_students_batches(
    subnet_path, supernet_path, tmp_path, monkeypatch
):
    """Per batch the teacher sees the student's (augmented) images, its logits are what the
    KL term compares against, and the logged ``kd`` is that term's mean over the epoch."""
    import torch.nn.functional as F
    import widthsearch.evaluate.finetune as ft

    teacher_calls, kd_calls, student_inputs = [], [], []
    real_load, real_kd = ft.load_teacher, ft.distill_loss

    def load_spy(path, meta, **kwargs):
        model, recalibrate = real_load(path, meta, **kwargs)
        model.register_forward_hook(
            lambda m, args, out: teacher_calls.append((args[0].clone(), out.detach().clone()))
        )
        return model, recalibrate

    def kd_spy(logits, teacher_logits, **kwargs):
        value = real_kd(logits, teacher_logits, **kwargs)
        record = (logits.detach().clone(), teacher_logits.clone(), kwargs, float(value.detach()))
        kd_calls.append(record)
        return value

    monkeypatch.setattr(ft, "load_teacher", load_spy)
    monkeypatch.setattr(ft, "distill_loss", kd_spy)
    payload = read_subnet(subnet_path)
    payload["module"].register_forward_hook(
        lambda m, args, out: student_inputs.append(args[0].clone())
    )
    result = finetune_subnet(
        payload,
        out=tmp_path / "kd.pt",
        epochs=1,
        batch_size=64,
        train_limit=256,
        teacher=supernet_path,
        temperature=3.0,
        alpha=0.7,
        eval_images=0,
        log=None,
    )
    assert len(kd_calls) == len(student_inputs) == 4
    training_calls = teacher_calls[-4:]  # the earlier ones recalibrated the teacher's BN
    for (x_teacher, t_out), x_student, (s, t, kwargs, value) in zip(
        training_calls, student_inputs, kd_calls, strict=True
    ):
        assert torch.equal(x_teacher, x_student) and torch.equal(t, t_out)
        assert kwargs == {"temperature": 3.0}
        by_hand = 9.0 * F.kl_div(
            F.log_softmax(s / 3.0, dim=1), F.softmax(t / 3.0, dim=1), reduction="batchmean"
        )
        assert value == pytest.approx(float(by_hand), rel=1e-5)
    (entry,) = result["finetune"]["history"]
    assert entry["kd"] == pytest.approx(sum(c[3] for c in kd_calls) / 4, rel=1e-6)
    assert entry["loss"] == pytest.approx(0.3 * entry["ce"] + 0.7 * entry["kd"], rel=1e-5)


def test_init_random_retrains_the_widths_from_the_models_own_initialisation(
    subnet_path, tmp_path, capsys
):
    from widthsearch.evaluate import build_subnet

    before = read_subnet(subnet_path)
    fresh = finetune_subnet(subnet_path, out=tmp_path / "r0.pt", epochs=0, init="random", seed=4)
    torch.manual_seed(4)
    expected = build_subnet(before["meta"], before["widths"]).state_dict()
    for key, value in fresh["state_dict"].items():
        assert torch.equal(value, expected[key]), key
    assert not all(torch.equal(v, before["state_dict"][k]) for k, v in fresh["state_dict"].items())
    assert fresh["widths"] == before["widths"] and fresh["macs"] == before["macs"]
    assert fresh["inheritance"]["chosen"] == "random-init"
    assert fresh["finetune"]["init"] == "random"
    # the CLI flag, and a resume with the other init is refused in one line
    out = tmp_path / "r1.pt"
    argv = ["finetune", str(subnet_path), "--out", str(out), "--train-limit", "64"]
    assert main([*argv, "--epochs", "2", "--init", "random", "--stop-after", "1"]) == 0
    capsys.readouterr()
    assert main([*argv, "--epochs", "2", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "init='random', now 'inherit'" in err[0], err
