"""Leases: their states and the scheduler that forms, runs and ends them (one phase a module)."""
