"""ComputeSwarm test suite, in tiers: unit, integration, e2e, browser, bench."""
