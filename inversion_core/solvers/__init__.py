"""Per-step solvers of the implicit inversion equation (see steps.py)."""
