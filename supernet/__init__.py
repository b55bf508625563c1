"""widthsearch.supernet."""
