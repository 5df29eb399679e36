"""Sweep specs run as Ray Tune experiments."""
