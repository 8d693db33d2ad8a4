"""Method-level pieces that compose with any step solver (EasyInv's blend)."""
