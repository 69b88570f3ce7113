"""Fold: the deploy form of a loaded model, exact and proven in float64 (every re-parameterization
convention, Conv+BN fusion, the deploy rewrites, the probe that measures them)."""
