"""The WireGuard overlay: keys, addresses, configs, backends, fencing and the netns testbed."""
