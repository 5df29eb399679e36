"""ComputeSwarm: rent consumer GPUs to distributed ML jobs as Ray clusters over WireGuard."""

__version__ = "0.1.0"
