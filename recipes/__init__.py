"""widthsearch.recipes."""
