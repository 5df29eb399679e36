"""Sellers as the coordinator sees them: enrollment, heartbeats, states, GPU claims."""
