"""Fine-tuning on the shared training loop: a state file of the previous version (no step
counter) still resumes exactly, and a job option that is not one fails before any work."""

from __future__ import annotations

import pytest
import torch
from widthsearch.evaluate import finetune_paths, finetune_subnet


def test_a_state_file_without_a_step_counter_resumes_exactly(subnet_path, tmp_path):
    opts = {"epochs": 2, "train_limit": 128, "batch_size": 64, "eval_images": 0, "log": None}
    full = finetune_subnet(subnet_path, out=tmp_path / "a.pt", **opts)
    finetune_subnet(subnet_path, out=tmp_path / "b.pt", stop_after=1, **opts)
    state_path = finetune_paths(tmp_path / "b.pt")[1]
    state = torch.load(state_path, weights_only=True)
    assert state.pop("step") == 2  # what older files lack: the count follows from the epoch
    torch.save(state, state_path)
    resumed = finetune_subnet(subnet_path, out=tmp_path / "b.pt", resume=True, **opts)
    for key, value in full["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key


def test_an_unknown_job_option_fails_before_any_work(tmp_path):
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) resum;"):
        finetune_subnet(tmp_path / "missing.pt", out=tmp_path / "x.pt", resum=True)
