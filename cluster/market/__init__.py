"""The market: buyers' bids against sellers' asks (pure)."""
