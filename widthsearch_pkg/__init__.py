"""widthsearch: one slimmable supernet per network, many fast width searches."""

__version__ = "0.1.0"
__all__ = ["__version__"]
