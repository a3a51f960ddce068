"""Numba kernels of hpcblend (installed as ``hpcblend.kernels``)."""
