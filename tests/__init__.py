"""rnnjax's tests: `python -m pytest` (the README's test command runs them all)."""
