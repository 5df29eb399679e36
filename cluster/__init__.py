"""The coordinator, seller agent, market, leases, metering and ledger."""
