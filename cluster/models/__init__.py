"""Model versions: trained adapters registered per buyer, resolved by name@version."""
