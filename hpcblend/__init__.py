"""hpcblend: MPI-parallel batch deblending with a scarlet-style model in Numba."""

__all__ = ["__version__"]
__version__ = "0.1.0"
