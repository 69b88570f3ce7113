"""Bench: what an artifact is, the runtime that times it, the input it is timed at (the CLI only
parses flags and prints)."""
