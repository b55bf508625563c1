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
    # each unit starts exactly at its scale
    assert format_macs(1_000_000_000) == "1.00G"
    assert format_macs(1_000_000) == "1.00M"
    assert format_macs(1_000) == "1.00k" and format_macs(12_345) == "12.35k"
    assert format_macs(None) == "—"  # not measured (report tables)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (True, ["bad budget True"]),
        ("abc", ["bad budget 'abc'", "(0.5, 50%)", "(20M, 1.5G, 300k, 123456)"]),
        ("1.5", ["budget '1.5' read as a fraction", "with a k/M/G suffix"]),
        ("150%", ["budget '150%' read as a fraction", "must be in (0, 1]"]),
        (1.5, ["budget '1.5' read as a fraction"]),
    ],
)
def test_parse_budget_messages_quote_the_input(text, words):
    with pytest.raises(ValueError) as info:
        parse_budget(text, FULL)
    assert all(w in str(info.value) for w in words), str(info.value)


def test_resolve_budgets_boundaries_and_messages(sn):
    full, smallest = sn.macs(), sn.macs(sn.space.min())
    # both ends are reachable: the smallest subnet and the full model
    assert resolve_budgets(sn, [smallest, full]) == [smallest, full]
    with pytest.raises(ValueError) as below:
        resolve_budgets(sn, [smallest - 1])
    text = str(below.value)
    assert text.startswith(f"budget {smallest - 1} = {smallest - 1} MACs is below")
    assert f"{smallest / full:.1%} of full" in text and format_macs(smallest) in text
    with pytest.raises(ValueError) as above:
        resolve_budgets(sn, [full + 1])
    assert f"above the full model's {full} MACs ({format_macs(full)})" in str(above.value)
    with pytest.raises(ValueError) as none:
        resolve_budgets(sn, [])
    assert str(none.value) == "no budget given"


def test_budget_errors_say_how_to_write_one():
    with pytest.raises(ValueError, match=r"absolute MACs \(20M, 1\.5G, 300k, 123456\)$"):
        parse_budget("lots", 1000)
    with pytest.raises(ValueError) as info:
        parse_budget("1.5", 1000)
    assert str(info.value) == (
        "budget '1.5' read as a fraction of the full MACs must be in (0, 1]; "
        "write absolute budgets as integers or with a k/M/G suffix"
    )
