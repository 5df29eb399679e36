"""The inference gateway: the one public way into buyers' Ray Serve apps (pure core + backend)."""
