"""The export pipeline: load -> fold -> export -> simplify -> graph checks -> parity -> write, its
options, steps and typed report; `deploy validate` reuses load, fold and parity."""
