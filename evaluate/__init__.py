"""widthsearch.evaluate."""
