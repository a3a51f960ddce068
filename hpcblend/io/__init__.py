"""hpcblend.io."""
