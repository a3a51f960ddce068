"""hpcblend.diagnostics."""
