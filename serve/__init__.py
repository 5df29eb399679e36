"""Inference specs run as Ray Serve applications."""
