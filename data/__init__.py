"""Datasets and bulk transfer: content-addressed chunks, manifests, caches."""
