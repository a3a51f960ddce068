"""hpcblend.measure."""
