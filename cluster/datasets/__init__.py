"""Buyers' datasets: named immutable versions and read-only shares."""
