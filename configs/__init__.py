"""Example job specs, templates and service configs (package data)."""
