"""The local swarm (a coordinator and simulated sellers on one machine) and its demo."""
