"""The held-out split search scores on is the one training recorded, or a clear error."""

from __future__ import annotations

import pytest
from widthsearch.search import build_evaluator
from widthsearch.supernet import DataError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_search_refuses_a_heldout_split_other_than_the_recorded_one(loaded, loaded_splits):
    sn, payload = loaded
    splits = loaded_splits
    recorded = {**payload, "data": {"heldout_digest": splits.heldout_digest}}
    assert build_evaluator(sn, recorded).num_images > 0  # the same split: scored
    other = {**payload, "data": {"heldout_digest": "0" * 64}}
    with pytest.raises(DataError, match="held-out split differs"):
        build_evaluator(sn, other)
