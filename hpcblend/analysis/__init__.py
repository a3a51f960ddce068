"""hpcblend.analysis."""
