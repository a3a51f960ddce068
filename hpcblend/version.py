"""hpcblend's version (one place: the facade, provenance and the CLI read it from here)."""

__all__ = ["__version__"]

#: The package version (kept equal to ``setup.cfg``'s ``version``).
__version__ = "0.1.0"
