"""hpcblend.units."""
