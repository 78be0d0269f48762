"""Benchmarks that print their figures as JSON: `python -m bench.<name>`."""
