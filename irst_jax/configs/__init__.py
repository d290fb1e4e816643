"""Config defaults shipped with the package (the repository's configs/*.py build on them)."""
