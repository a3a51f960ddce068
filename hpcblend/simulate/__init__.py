"""hpcblend.simulate."""
