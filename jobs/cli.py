"""Buyer commands: `submit`, `jobs ...`, `market quote`, `ledger`."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer

from computeswarm.cluster.cli.options import API_KEY, COORDINATOR, JSON
from computeswarm.cluster.cli.options import buyer_client as _client

jobs_app = typer.Typer(help="Your jobs: list, status, logs, cancel.", no_args_is_help=True)
market_app = typer.Typer(help="Ask the market without leasing anything.", no_args_is_help=True)
sweeps_app = typer.Typer(
    help="Hyperparameter sweeps: trials, metrics, costs.", no_args_is_help=True
)

SPEC_FILE = typer.Argument(None, help="The job spec (YAML); or use --template.")
TEMPLATE = typer.Option(
    None, "--template", "-t", help="A template name (`computeswarm templates list`) or file."
)
SET = typer.Option(
    [], "--set", "-s", metavar="KEY=VALUE", help="A template parameter; repeat for more."
)
TEMPLATE_BASE = typer.Option(
    None,
    "--dir",
    file_okay=False,
    help="Folder the template's working_dir is relative to (default: the current one).",
)
MAX_UPLOAD = 16 * 1024 * 1024


def submit(
    spec_file: Path | None = SPEC_FILE,
    template: str | None = TEMPLATE,
    sets: list[str] = SET,
    base: Path | None = TEMPLATE_BASE,
    follow: bool = typer.Option(False, "--follow", "-f", help="Stream logs until it ends."),
    coordinator: str | None = COORDINATOR,
    api_key: str | None = API_KEY,
    as_json: bool = JSON,
) -> None:
    """Submit a job spec or template; its working_dir is uploaded. Waits for supply if needed."""
    from computeswarm.jobs.upload import pack_working_dir

    spec, working_dir = _load_spec(spec_file, template, sets, base)
    upload = pack_working_dir(working_dir, MAX_UPLOAD) if working_dir else None
    from computeswarm.cluster.api.views import JobView

    client = _client(coordinator, api_key)
    answer = client.submit_job(spec.model_dump(mode="json"), upload)
    if as_json and not follow:
        typer.echo(json.dumps(answer))
        return
    job = JobView.model_validate(answer)
    typer.echo(f"submitted {job.id} ({job.name}): {job.state}", err=True)
    if follow:
        raise typer.Exit(_follow(client, job.id))


@jobs_app.command("list")
def jobs_list(
    coordinator: str | None = COORDINATOR, api_key: str | None = API_KEY, as_json: bool = JSON
) -> None:
    """Your jobs, newest first."""
    from computeswarm.cluster.api.views import JobView

    answer = _client(coordinator, api_key).jobs()
    if as_json:
        typer.echo(json.dumps(answer))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "name", "state", "lease", "cost", "reason")
    for job in (JobView.model_validate(j) for j in answer):
        table.add_row(
            job.id,
            job.name,
            job.state,
            job.lease.id if job.lease else "-",
            job.cost or "-",
            job.reason or "",
        )
    Console(width=None if sys.stdout.isatty() else 200).print(table)


@jobs_app.command("status")
def jobs_status(
    job_id: str,
    coordinator: str | None = COORDINATOR,
    api_key: str | None = API_KEY,
    as_json: bool = JSON,
) -> None:
    """One job: state, reason, its lease's sellers and price, its cost."""
    from computeswarm.cluster.api.views import JobView

    answer = _client(coordinator, api_key).job(job_id)
    if as_json:
        typer.echo(json.dumps(answer))
        return
    for line in job_lines(JobView.model_validate(answer)):
        typer.echo(line)


def job_lines(job) -> list[str]:
    """A job view as text: its lease, and its kind's progress."""
    lines = [f"{job.id} ({job.name}): {job.state}" + (f" - {job.reason}" if job.reason else "")]
    if lease := job.lease:
        lines.append(
            f"  lease {lease.id}: {lease.state}, {lease.price_per_hour}/h, escrow {lease.escrow}"
        )
        lines += [
            f"    {m.seller_id}: {m.gpus} GPU(s) at {m.price_per_gpu_hour}/GPU-h, "
            f"{m.state}{' (driver)' if m.driver else ''}"
            for m in lease.members
        ]
    if training := job.training:
        losses = ", ".join(f"{x:.3f}" for x in training.recent_losses)
        lines.append(
            f"  training: step {training.step}/{training.steps or '?'}, recent loss {losses}"
        )
        lines += [
            f"    stage {stage['stage']} on {stage['seller_id']}: layers {stage['layers']}, "
            f"{stage['params']:,} params, ~{stage['memory_gb']:.3f} GB of {stage['vram_gb']:g}"
            for stage in training.stages or []
        ]
        metrics = training.metrics or {}
        if "eval_loss" in metrics:
            base = metrics.get("base_eval_loss")
            lines.append(
                f"  eval loss {metrics['eval_loss']:.4f}"
                + (f" (base model {base:.4f})" if base is not None else "")
            )
    if sweep := job.sweep:
        states = ", ".join(f"{n} {state}" for state, n in sorted(sweep.trials.items()))
        lines.append(f"  sweep: {states or 'no trials yet'}; trials cost {sweep.trials_cost}")
        if sweep.best:
            lines.append(f"  best so far: {sweep.best.trial_id} {sweep.best.params}")
        lines.append(f"  leaderboard: computeswarm sweeps show {job.id}")
    if serve := job.serve:
        lines.append(
            f"  serving {', '.join(serve.models) or '(starting)'} at "
            f"<coordinator>{serve.endpoint} ({'ready' if serve.ready else 'not ready'}); "
            f"{serve.requests} requests, {serve.prompt_tokens} prompt + "
            f"{serve.completion_tokens} completion tokens"
        )
        if replicas := serve.replicas:
            lines.append(
                f"  replicas: {replicas['running']} running, {replicas.get('pending', 0)} "
                f"pending (autoscaling {replicas['min']}-{replicas['max']})"
            )
    if job.model_version:
        lines.append(f"  model version: {job.model_version}")
    if job.cost:
        lines.append(f"  cost: {job.cost}")
    return lines


@sweeps_app.command("show")
def sweeps_show(
    job_id: str,
    coordinator: str | None = COORDINATOR,
    api_key: str | None = API_KEY,
    as_json: bool = JSON,
) -> None:
    """A sweep's leaderboard: each trial's parameters, metric, state and cost, best first."""
    answer = _client(coordinator, api_key).sweep(job_id)
    if as_json:
        typer.echo(json.dumps(answer))
        return
    for line in leaderboard_lines(answer):
        typer.echo(line)


def leaderboard_lines(answer: dict) -> list[str]:
    """The leaderboard as text: metric against cost, and how the costs add up to the bill."""
    from computeswarm.cluster.api.views import SweepBoard
    from computeswarm.jobs.money import money_text

    board = SweepBoard.model_validate(answer)
    status = board.status
    lines = [
        f"{board.job_id}: {board.state}, {len(board.trials)} trials of "
        f"{status.get('planned', '?')} planned, {board.metric} ({board.mode})"
        + (" - cost cap reached" if status.get("budget_stopped") else "")
    ]
    params = sorted({k for t in board.trials for k in t.params})
    header = ["#", "trial", *params, board.metric, "iters", "state", "GPU-s", "cost"]
    rows = [
        [
            str(rank),
            t.trial_id,
            *(_short(t.params.get(k)) for k in params),
            "-" if t.metric is None else f"{t.metric:.4f}",
            str(t.iterations),
            t.state,
            f"{t.gpu_seconds:.1f}",
            money_text(t.cost_micros),
        ]
        for rank, t in enumerate(board.trials, 1)
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
    spent, cap = board.trials_cost_micros, board.cost_cap_micros
    lines.append(f"trials: {money_text(spent)}" + (f" of a {money_text(cap)} cap" if cap else ""))
    if board.bill_micros is not None:
        lines.append(
            "lease overhead (formation, imports, idle GPUs): "
            + money_text(board.overhead_micros or 0)
        )
        lines.append(f"bill: {money_text(board.bill_micros)}")
    if board.model_version:
        lines.append(f"best trial registered as {board.model_version}")
    return lines


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@jobs_app.command("logs")
def jobs_logs(
    job_id: str,
    follow: bool = typer.Option(False, "--follow", "-f"),
    coordinator: str | None = COORDINATOR,
    api_key: str | None = API_KEY,
) -> None:
    """The job driver's output (streamed with --follow)."""
    client = _client(coordinator, api_key)
    if follow:
        raise typer.Exit(_follow(client, job_id))
    from computeswarm.cluster.api.views import LogChunk

    typer.echo(LogChunk.model_validate(client.job_logs(job_id)).text, nl=False)


@jobs_app.command("cancel")
def jobs_cancel(
    job_id: str, coordinator: str | None = COORDINATOR, api_key: str | None = API_KEY
) -> None:
    """Cancel a job: its lease is released and you pay only for the time used."""
    from computeswarm.cluster.api.views import JobView

    job = JobView.model_validate(_client(coordinator, api_key).cancel_job(job_id))
    typer.echo(f"{job.id}: {job.state}")


@jobs_app.command("dashboard")
def jobs_dashboard(
    job_id: str,
    open_it: bool = typer.Option(False, "--open", help="open it in your browser"),
    coordinator: str | None = COORDINATOR,
    api_key: str | None = API_KEY,
) -> None:
    """A link to the Ray dashboard of the job's lease, through the coordinator (one use,
    within a minute; the browser then holds an hour's session)."""
    url = _client(coordinator, api_key).dashboard_link(job_id)
    typer.echo(url)
    if open_it:
        import webbrowser

        webbrowser.open(url)


@market_app.command("quote")
def market_quote(
    spec_file: Path | None = SPEC_FILE,
    template: str | None = TEMPLATE,
    sets: list[str] = SET,
    base: Path | None = TEMPLATE_BASE,
    explain: bool = typer.Option(False, "--explain", help="Say why each seller was not chosen."),
    coordinator: str | None = COORDINATOR,
    api_key: str | None = API_KEY,
    as_json: bool = JSON,
) -> None:
    """The sellers, price and estimated cost the market would choose now."""
    from computeswarm.cluster.api.views import Quote

    spec, working_dir = _load_spec(spec_file, template, sets, base)
    answer = _client(coordinator, api_key).quote(spec.model_dump(mode="json"), explain)
    quote = Quote.model_validate(answer)
    stages = None
    if quote.matched and working_dir is not None:
        offered = [(s.seller_id, float(s.vram_gb)) for s in quote.sellers]
        if (stages := spec.stage_split(working_dir, offered)) is not None:
            answer["stages"] = stages
    if as_json:
        typer.echo(json.dumps(answer))
        return
    if not quote.matched:
        typer.echo(f"no match now: {quote.reason}")
    else:
        typer.echo(
            f"{quote.price_per_hour}/h, at most {quote.estimated_cost} for "
            f"{quote.max_duration_s / 3600:g} h (escrow {quote.escrow})"
        )
        for s in quote.sellers:
            typer.echo(
                f"  {s.seller_id}: {s.gpus} GPU(s), ask {s.ask_per_gpu_hour}, "
                f"you pay {s.price_per_gpu_hour} per GPU-h"
            )
        for stage in stages or []:
            typer.echo(
                f"  stage {stage['stage']} on {stage['seller_id']} ({stage['vram_gb']:g} GB): "
                f"layers {stage['layers']}, {stage['params']:,} params, "
                f"~{stage['memory_gb']:.3f} GB{'' if stage['fits'] else ' (does NOT fit)'}"
            )
    for seller, reason in quote.rejected.items():
        typer.echo(f"  not {seller}: {reason}")
    if (kept := quote.storage) is not None:
        typer.echo(
            f"storage: you keep {kept.held_bytes / 1e9:.3f} GB at {kept.price_per_gb_hour} per "
            f"GB-hour: {kept.per_hour}/h, {kept.per_month}/month ({kept.during_job} during the job)"
        )
        for name, v in kept.volumes.items():
            typer.echo(
                f"  volume {name}: {v.size_bytes / 1e9:.3f} of {v.size_limit_bytes / 1e9:.3f} GB "
                f"({v.per_hour_when_full}/h when full)"
            )


def ledger(
    account: str | None = typer.Option(None, help="One account (admins: any)."),
    coordinator: str | None = COORDINATOR,
    api_key: str | None = API_KEY,
    as_json: bool = JSON,
) -> None:
    """Balances and entries you may see: your spend, or your earnings."""
    from computeswarm.cluster.api.views import LedgerView

    answer = _client(coordinator, api_key).ledger(account)
    if as_json:
        typer.echo(json.dumps(answer))
        return
    view = LedgerView.model_validate(answer)
    for entry in view.entries:
        typer.echo(
            f"  {entry.txn}  {entry.kind:<12} {entry.ref:<16} "
            f"{entry.account:<28} {entry.amount:>14}"
        )
    typer.echo("balances:")
    for account_name, amount in view.balances.items():
        typer.echo(f"  {account_name:<30} {amount:>14}")
    if view.storage_bytes:
        typer.echo("stored in the object store:")
        for account_name, size in view.storage_bytes.items():
            typer.echo(f"  {account_name:<30} {size:>14} bytes")


def _load_spec(spec_file: Path | None, template: str | None, sets: list[str], base: Path | None):
    """The spec and its working_dir from a spec file, or from a template and its --set
    values; both pass the same working_dir and input checks."""
    from computeswarm.jobs.errors import SpecError

    if (spec_file is None) == (template is None):
        raise SpecError("give a job spec file or --template NAME (one of them)")
    if template is None:
        if sets or base is not None:
            raise SpecError("--set and --dir go with --template, not a spec file")
        from computeswarm.jobs.spec import load_job_spec

        return load_job_spec(spec_file)
    from computeswarm.jobs.templates import parse_sets, render_job_spec

    return render_job_spec(template, parse_sets(sets), base or Path.cwd())


def _follow(client, job_id: str) -> int:
    """Print logs as they come until the job ends; exit 0 only if it succeeded."""
    from computeswarm.cluster.api.views import JobView, LogChunk

    offset, last_reason = 0, None
    while True:
        chunk = LogChunk.model_validate(client.job_logs(job_id, offset))
        if chunk.text:
            typer.echo(chunk.text, nl=False)
        offset = chunk.offset
        if chunk.done:
            break
        if chunk.state in ("pending", "scheduled"):
            reason = JobView.model_validate(client.job(job_id)).reason
            if reason != last_reason:
                typer.echo(f"[{chunk.state}] {reason}", err=True)
                last_reason = reason
        time.sleep(1.0)
    job = JobView.model_validate(client.job(job_id))
    typer.echo(f"[{job.state}] {job.reason or ''} cost {job.cost or '0'}", err=True)
    return 0 if job.state == "succeeded" else 1
