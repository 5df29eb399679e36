"""Money: integer micro-units, and the one way the API and the CLI write them as text.

Kept in `jobs/` (no coordinator imports): Ray jobs import it without `cluster/`.
"""

from __future__ import annotations

MICROS = 1_000_000  # micro-units in one currency unit: every amount is an integer of these


def money_text(micros: int) -> str:
    """Exact decimal text of integer micro-units, always six places: `0.440000`. One format
    in every response and message (amounts, offers, the market's reasons): what a buyer
    reads is what the ledger holds, to the micro-unit."""
    whole, frac = divmod(abs(micros), MICROS)
    return f"{'-' if micros < 0 else ''}{whole}.{frac:06d}"
