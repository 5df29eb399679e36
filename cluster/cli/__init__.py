"""Operator and seller commands: head, invite, accounts, sellers, seller, models."""
