"""Foundations every other part stands on, torch-free: errors and their exit codes, atomic writes,
the output-path guard, bounds on user numbers, the environment, parity metrics, output names."""
