"""Each lease's Ray dashboard, served through the coordinator to the lease's owner."""
