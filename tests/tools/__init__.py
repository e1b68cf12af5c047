"""Scripts the tests run (and that run on their own: each file's docstring says how)."""
