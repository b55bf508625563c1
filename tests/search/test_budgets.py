"""Budget parsing: fractions, percentages, absolute values with suffixes, reachability."""

import pytest
import torch
from widthsearch.search import format_macs, parse_budget, resolve_budgets
from widthsearch.supernet import Supernet
from widthsearch.supernet.models import create_model

FULL = 40_000_000


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.5", 20_000_000),
        ("50%", 20_000_000),
        ("1.0", FULL),
        ("20M", 20_000_000),
        ("1.5G", 1_500_000_000),
        ("300k", 300_000),
        ("300K", 300_000),
        ("123456", 123_456),
        ("2e-1", 8_000_000),
        (0.25, 10_000_000),
        (1234, 1234),
    ],
)
def test_parse_budget(text, expected):
    assert parse_budget(text, FULL) == expected


@pytest.mark.parametrize("text", ["", "abc", "1.5", "-0.5", "0.0", "20X", "150%", True])
def test_parse_budget_rejects(text):
    with pytest.raises(ValueError):
        parse_budget(text, FULL)


@pytest.fixture(scope="module")
def sn():
    model = create_model("resnet20", num_classes=10, in_chans=1)
    return Supernet.from_model(model, torch.zeros(1, 1, 12, 12), bins=8)


def test_resolve_budgets_checks_reachability(sn):
    full, smallest = sn.macs(), sn.macs(sn.space.min())
    assert resolve_budgets(sn, ["0.5", 0.5, str(full)]) == [int(0.5 * full), full]
    with pytest.raises(ValueError, match=str(smallest)) as below:
        resolve_budgets(sn, [smallest - 1])
    assert "smallest reachable" in str(below.value)
    with pytest.raises(ValueError, match="above the full model"):
        resolve_budgets(sn, [full + 1])
    with pytest.raises(ValueError, match="no budget"):
        resolve_budgets(sn, [])


def test_format_macs():
    assert format_macs(31_021_952) == "31.02M"
    assert format_macs(1_500_000_000) == "1.50G"
    assert format_macs(999) == "999"
