"""hpcblend.deblend."""
