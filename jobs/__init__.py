"""Buyer job specs, templates, submission, SDK and training workloads."""
