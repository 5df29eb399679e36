"""What runs on a seller's box: joining, the agent, the lease workers, join-cluster.sh."""
