"""Ray nodes and the sandbox they run in, on the head host and on sellers alike."""
