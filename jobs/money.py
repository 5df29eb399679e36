"""Money: integer micro-units, and the one way the API and the CLI write them as text.

Kept in `jobs/` (no coordinator imports): Ray jobs import it without `cluster/`.
"""

from __future__ import annotations

MICROS = 1_000_000  # micro-units in one currency unit: every amount is an integer of these


def money_text(micros: int, *, trim: bool = False) -> str:
    """Exact decimal text of integer micro-units: `0.440000`; with `trim`, `0.44`.

    Amounts (costs, escrows, balances, prices the market computed) are written with all six
    places; `trim` drops trailing zeros, for prices as a seller typed them (offers, and the
    market's reasons that quote them).
    """
    whole, frac = divmod(abs(micros), MICROS)
    text = f"{'-' if micros < 0 else ''}{whole}.{frac:06d}"
    return text.rstrip("0").rstrip(".") if trim else text
