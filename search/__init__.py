"""widthsearch.search."""
