"""hpcblend.parallel."""
