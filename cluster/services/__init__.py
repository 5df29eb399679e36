"""What the API routes call: one module per resource, with explicit dependencies."""
