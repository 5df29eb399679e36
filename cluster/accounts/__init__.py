"""Accounts, their API keys and roles (admin, buyer, seller), and stored credentials."""
