"""Constrained-solver benchmark: ``python -m bench.constrained`` prints the comparison table."""
