"""Evolution storages: a URL that cannot be opened is one clear error, before any search."""

from __future__ import annotations

import pytest
from widthsearch.search import make_storage


@pytest.mark.parametrize("url", ["nosuch://x", "postgresql+nodriver://u@h/db"])
def test_unopenable_storage_url_is_one_line_value_error(url):
    with pytest.raises(ValueError, match="cannot be opened") as info:
        make_storage(url)
    assert "\n" not in str(info.value)


def test_sqlite_storage_opens(tmp_path):
    storage = make_storage(f"sqlite:///{tmp_path / 'study.db'}")
    assert storage.get_all_studies() == []
    assert (tmp_path / "study.db").is_file()
