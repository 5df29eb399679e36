"""`computeswarm jobs watch [JOB]` and `computeswarm top`: a live view refreshed every
second. The core is pure (`progress`, `spend_micros`, `job_rows`, `seller_rows`): views in,
rows out, the clock passed in; `live` is the thin loop: rich's Live on a terminal (`q` or
Ctrl-C quits and leaves the terminal as it was), plain lines when not a TTY (a line per
job whenever what it shows changes).
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import time
from collections.abc import Callable, Iterator
from decimal import Decimal

from computeswarm.cluster.api.views import JobView
from computeswarm.jobs.money import MICROS, money_text

JOB_COLUMNS = ("job", "name", "kind", "state", "for", "sellers", "progress", "spent", "rate/h")
SELLER_COLUMNS = ("seller", "state", "gpus", "ask/GPU-h", "rtt ms", "heartbeat")


def spend_micros(job: JobView, now: float) -> tuple[int, int]:
    """(spent so far, spend per hour now): each member's price x GPUs x time attached. The
    settled cost replaces the estimate once the job's leases are billed."""
    if job.cost is not None:
        return _micros(job.cost), 0
    spent = rate = 0
    for member in job.lease.members if job.lease else []:
        if member.attached_at is None:
            continue
        per_hour = _micros(member.price_per_gpu_hour) * member.gpus
        until = member.detached_at or now
        spent += int(per_hour * max(0.0, until - member.attached_at) / 3600)
        rate += per_hour if member.detached_at is None else 0
    return spent, rate


def progress(job: JobView) -> str:
    """What the kind reports: steps and loss, trials and the best metric, requests."""
    if (t := job.training) is not None:
        loss = f", loss {t.recent_losses[-1]:.3f}" if t.recent_losses else ""
        return f"step {t.step}/{t.steps or '?'}{loss}"
    if (s := job.sweep) is not None:
        done = sum(n for state, n in s.trials.items() if state in ("completed", "stopped_early"))
        best = f", best {s.best.metric:.4g}" if s.best and s.best.metric is not None else ""
        return f"trials {done}/{sum(s.trials.values())} done{best}"
    if (v := job.serve) is not None:
        ready = "ready" if v.ready else "starting"
        return f"{ready}, {v.requests} requests, {v.completion_tokens} tokens out"
    return job.reason or ""


def job_rows(jobs: list[JobView], now: float) -> list[tuple[str, ...]]:
    rows = []
    for job in jobs:
        spent, rate = spend_micros(job, now)
        began = job.started_at or job.created_at
        lasted = (job.ended_at or now) - began if began else 0.0
        sellers = len(job.lease.members) if job.lease else 0
        escrow = f" of {job.lease.escrow}" if job.lease else ""
        rows.append(
            (
                job.id,
                job.name,
                job.kind,
                job.state,
                _duration(lasted),
                str(sellers),
                progress(job),
                money_text(spent) + escrow,
                money_text(rate) if rate else "-",
            )
        )
    return rows


def seller_rows(sellers: list[dict], now: float) -> list[tuple[str, ...]]:
    """The operator's view of supply: each seller's state, GPUs, ask and link."""
    rows = []
    for s in sellers:
        gpus = s.get("gpus") or []
        models = sorted({g["model"] for g in gpus})
        seen = s.get("last_heartbeat")
        rows.append(
            (
                s.get("name") or s["id"],
                s.get("state", "?"),
                f"{len(gpus)} x {'/'.join(models)}" if gpus else "0",
                (s.get("offer") or {}).get("price_per_gpu_hour", "-"),
                f"{s['rtt_ms']:.1f}" if s.get("rtt_ms") is not None else "-",
                f"{now - seen:.0f}s ago" if seen else "-",
            )
        )
    return rows


def live(
    read: Callable[[], tuple[list[tuple[str, ...]], list[tuple[str, ...]] | None]],
    title: str,
    columns: tuple[str, ...],
    interval_s: float = 1.0,
    until: Callable[[], bool] = lambda: False,
    extra_columns: tuple[str, ...] = SELLER_COLUMNS,
) -> None:
    """Refresh `read()`'s rows every `interval_s` until `q`, Ctrl-C or `until()`."""
    if not sys.stdout.isatty():
        _plain(read, interval_s, until)
        return
    from rich.console import Group
    from rich.live import Live
    from rich.table import Table

    def frame():
        rows, extra = read()
        table = Table(*columns, title=f"{title}  (q quits)", title_justify="left")
        for row in rows:
            table.add_row(*row)
        if extra is None:
            return table
        supply = Table(*extra_columns, title="sellers", title_justify="left")
        for row in extra:
            supply.add_row(*row)
        return Group(table, supply)

    with _keys() as pressed, Live(frame(), auto_refresh=False, screen=False) as view:
        try:
            while not until():
                if "q" in pressed(interval_s):
                    break
                view.update(frame(), refresh=True)
        except KeyboardInterrupt:
            pass


def _plain(read, interval_s: float, until: Callable[[], bool]) -> None:
    shown: dict[str, tuple[str, ...]] = {}
    try:
        while True:
            rows, _ = read()
            for row in rows:
                if shown.get(row[0]) != row:
                    shown[row[0]] = row
                    print("  ".join(row), flush=True)
            if until():
                return
            time.sleep(interval_s)
    except KeyboardInterrupt:
        pass


@contextlib.contextmanager
def _keys() -> Iterator[Callable[[float], str]]:
    """Keys pressed on the terminal, without waiting for Enter (restored on the way out)."""
    if not sys.stdin.isatty():
        yield lambda timeout: (time.sleep(timeout), "")[1]
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def pressed(timeout: float) -> str:
        ready, _, _ = select.select([fd], [], [], timeout)
        return os.read(fd, 32).decode(errors="replace").lower() if ready else ""

    try:
        yield pressed
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _micros(text: str) -> int:
    return int(Decimal(text) * MICROS)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
