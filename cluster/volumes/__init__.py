"""Buyers\x27 persistent volumes: names, limits and the chain of commits."""
