"""The seller's local web dashboard: this box, its lease, its earnings and its price, on
127.0.0.1 only, behind a token kept in the seller's state dir."""
