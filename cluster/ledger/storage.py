"""Storage metered in GB-hours: every `meter_every_s`, what each buyer keeps in volumes
(their newest commits) and datasets (their chunks, shared between versions) is sampled
and billed for the period just ended, at `storage.price_per_gb_hour`, like S3's daily
samples. The charge is a ledger transaction (`storage`, buyer -> platform); each
account's metered-until time is kept in the store, so a restart neither skips nor
bills a period twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from decimal import ROUND_FLOOR, Decimal

from sqlalchemy import func, select

from computeswarm.cluster.ledger import journal
from computeswarm.cluster.objects.client import UNAVAILABLE, ObjectStore
from computeswarm.cluster.store.db import Store
from computeswarm.cluster.store.models import Dataset, Volume
from computeswarm.cluster.store.models import StorageMeter as MeterRow
from computeswarm.jobs.money import MICROS

log = logging.getLogger("computeswarm.coordinator")
GB = 10**9


def storage_micros(held_bytes: int, seconds: float, price_per_gb_hour: Decimal) -> int:
    """The charge for holding `held_bytes` for `seconds` (rounded down to a micro-unit)."""
    cost = Decimal(held_bytes) / GB * Decimal(seconds) / 3600 * price_per_gb_hour * MICROS
    return int(cost.to_integral_value(rounding=ROUND_FLOOR))


def per_hour_micros(held_bytes: int, price_per_gb_hour: Decimal) -> int:
    return storage_micros(held_bytes, 3600, price_per_gb_hour)


class StorageMeter:
    def __init__(
        self,
        store: Store,
        clock: Callable[[], float],
        objects: Callable[[], ObjectStore | None],
        price_per_gb_hour: Decimal,
        every_s: float,
    ):
        self.store, self.clock, self.objects = store, clock, objects
        self.price, self.every_s = price_per_gb_hour, every_s
        self._next = 0.0  # no account is due before this (cheap ticks in between)

    def held(self, account_id: str) -> int:
        """Bytes the account keeps: its volumes' newest commits and its datasets' chunks."""
        with self.store.transaction() as db:
            volumes = db.scalar(
                select(func.coalesce(func.sum(Volume.size_bytes), 0)).where(
                    Volume.account_id == account_id
                )
            )
            has_datasets = db.scalar(select(Dataset.id).where(Dataset.account_id == account_id))
        datasets = 0
        if has_datasets and (objects := self.objects()) is not None:
            datasets = sum(o.size for o in objects.list(f"{account_id}/datasets/"))
        return int(volumes) + datasets

    def tick(self) -> list[str]:
        """Bill every account whose period has ended; the ledger transactions' ids."""
        now = self.clock()
        if now < self._next:
            return []
        posted = []
        for account_id in self._holders():
            try:
                if txn := self._bill(account_id, now):
                    posted.append(txn)
            except UNAVAILABLE as e:  # the next tick samples again
                log.warning("storage metering of %s skipped: %s", account_id, e)
                return posted
        self._next = now + min(self.every_s, 60.0)
        return posted

    def _holders(self) -> list[str]:
        with self.store.transaction() as db:
            holders = set(db.scalars(select(Volume.account_id))) | set(
                db.scalars(select(Dataset.account_id))
            )
            metered = set(db.scalars(select(MeterRow.account_id)))
            for account_id in holders - metered:  # metered from the first sight of its data
                db.add(MeterRow(account_id=account_id, until=self.clock()))
        return sorted(holders | metered)

    def _bill(self, account_id: str, now: float) -> str | None:
        with self.store.transaction() as db:
            row = db.get(MeterRow, account_id)
            periods = int((now - row.until) // self.every_s)
        if periods < 1:
            return None
        held = self.held(account_id)
        seconds = periods * self.every_s
        micros = storage_micros(held, seconds, self.price)
        with self.store.transaction() as db:
            row = db.get(MeterRow, account_id, with_for_update=True)
            if int((now - row.until) // self.every_s) < periods:
                return None  # billed meanwhile
            ref = f"{account_id}@{row.until:.0f}+{seconds:.0f}s:{held}B"
            row.until += seconds
            if micros:
                return journal.post(db, journal.storage(account_id, micros, ref), now)
        return None
