"""The double-entry ledger of micro-units, and how money is written."""
