"""Benchmarks that print their figures (README, "Performance")."""
