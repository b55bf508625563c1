"""The held-out split search scores on is the one training recorded, or a clear error."""

from __future__ import annotations

import pytest
from widthsearch.search import build_evaluator
from widthsearch.supernet import DataError, get_data

pytestmark = pytest.mark.usefixtures("one_thread")


def test_search_refuses_a_heldout_split_other_than_the_recorded_one(loaded):
    sn, payload = loaded
    data = payload["recipe"]["data"]
    splits = get_data(
        data["name"],
        heldout_size=data["heldout_size"],
        seed=data["seed"],
        train_limit=data["train_limit"] or None,
        synthetic_in_chans=sn.meta["in_chans"],
        synthetic_input_size=sn.meta["input_size"],
    )
    recorded = {**payload, "data": {"heldout_digest": splits.heldout_digest}}
    assert build_evaluator(sn, recorded).num_images > 0  # the same split: scored
    other = {**payload, "data": {"heldout_digest": "0" * 64}}
    with pytest.raises(DataError, match="held-out split differs"):
        build_evaluator(sn, other)
