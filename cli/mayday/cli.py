"""The mayday command: validate input, start a playbook, show progress, print a summary, exit."""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import click
from rich.console import Console

from mayday import inventory as inv
from mayday import locks, rules
from mayday.errors import BadInput, MaydayError
from mayday.history import history_lines, in_progress, load_runs
from mayday.runner import Progress, RunResult, run_playbook
from mayday.scenarios import SCENARIOS, Scenario

err = Console(stderr=True, highlight=False)


def target_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options every scenario takes."""

    @click.option("-i", "--inventory", "inventory_name", default=None,
                  help="Inventory path or name under inventories/ (default: the lab).")
    @click.option("--limit", default=None, help="Only these hosts or groups (ansible --limit).")
    @click.option("--check", is_flag=True, help="Dry run: change nothing, report what would change.")
    @click.option("--yes", is_flag=True, help="Confirm a run against a production inventory.")
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
    @click.option("--break-lock", "break_lock", default=None, metavar="INCIDENT",
                  help="Break the run locks held by this incident's run on another controller that is gone "
                       "(died, cancelled). A run alive on this controller is never broken.")
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return wrapper


def show_progress(progress: Progress) -> None:
    where = f"[{progress.step}/{len(progress.phases)}] " if progress.phases else ""
    err.print(f"{where}{progress.phase:<11} {progress.task}  [dim]{progress.elapsed:5.1f}s[/dim]")


def confirm_production(target: inv.Inventory, yes: bool, check: bool) -> bool:
    if not target.is_production or check:
        return target.is_production
    if yes:
        return True
    if not sys.stdin.isatty():
        raise BadInput(f"{target.path} is a production inventory: add --yes to confirm")
    if not click.confirm(f"{target.path} is PRODUCTION. Run against it?", default=False, err=True):
        raise BadInput("not confirmed: nothing was run")
    return True


def run_scenario(scenario: Scenario, extravars: dict[str, Any], inventory_name: str | None, limit: str | None,
                 check: bool, yes: bool, as_json: bool) -> None:
    path = inv.resolve(inventory_name)
    if limit:
        target = inv.load(path)
        target.check_limit(limit)
    else:
        target = inv.Inventory(path, [], {}, inv.environment_of(path))
    if confirm_production(target, yes, check):
        extravars["mayday_confirmed"] = True
    result = run_playbook(scenario.playbook, path, extravars, limit=limit, check=check,
                          on_progress=None if as_json else show_progress, phases=list(scenario.phases))
    if result.incident is None and result.rc == 0:
        raise BadInput(f"no host of {path} matched the scenario's hosts{' and --limit ' + limit if limit else ''}")
    with contextlib.suppress(OSError):  # the terminal went away during the run: the record holds the summary
        if scenario.name == "backup":
            show_backups(result, as_json)
        else:
            summarize(result, as_json)
    sys.exit(result.exit_code)


def show_backups(result: RunResult, as_json: bool) -> None:
    taken = [r["manifest"] for r in result.results if "manifest" in r]
    if as_json:
        click.echo(json.dumps(dict(result.as_dict(), backups=taken), indent=2))
        return
    for m in taken:
        click.echo(f"{m['id']}  {m['size']:>12} bytes  {sum(t['rows'] for t in m['tables'].values()):>10} rows")
    summarize(result, False)


def summarize(result: RunResult, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
        return
    report = result.report or {}
    outcome = report.get("outcome") or ("OK" if result.rc == 0 else "ERROR")
    colours = {"RECOVERED": "green", "DONE": "green", "NOOP": "green", "DRY-RUN": "cyan", "REFUSED": "yellow"}
    colour = colours.get(outcome, "red")
    err.print(f"\n[bold {colour}]{outcome}[/] in {result.duration_s:.1f}s  (run {result.run_id})")
    if report:
        err.print(report.get("summary") or "")
        downtime = report.get("downtime") or {}
        if downtime.get("seconds") is not None:
            err.print(f"downtime: {downtime['seconds']} s ({downtime.get('basis')})")
        err.print(f"incident {result.incident}: {result.report_md}")
    if result.handed_over:
        later = result.handed_over
        err.print(f"handed over to {later.get('scenario')}: [bold]{later.get('outcome')}[/] "
                  f"(incident {later.get('incident')}): {later.get('summary') or ''}")
    shown = list(dict.fromkeys(f.split(": ", 1)[-1] for f in result.failures))
    for failure in shown[:10]:
        err.print(f"[red]- {failure}[/]")


class LazyGroup(click.Group):
    """Commands from other modules, imported when named: `mayday level1` at 3 a.m. does not load the
    alert receiver, the lab or the drills first."""

    LAZY: ClassVar[dict[str, str]] = {"lab": "mayday.lab:lab", "notify": "mayday.notify_cli:notify_group",
            # Alert-triggered response (mayday.serve): the receiver, approvals, policies.
            "serve": "mayday.serve:serve", "approve": "mayday.serve:approve", "policy": "mayday.serve:policy_group",
            # Scheduled drills (mayday.drills).
            "drill": "mayday.drills.cli:drill_group"}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.LAZY})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.LAZY and cmd_name not in self.commands:
            module, attr = self.LAZY[cmd_name].split(":")
            self.add_command(getattr(importlib.import_module(module), attr), cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mayday")
def cli() -> None:
    """Emergency response and rollback as code."""


def scenario_command(scenario: Scenario) -> click.Command:
    """A command for one entry of the scenario table: its options are the scenario's inputs."""

    def run(inventory_name: str | None, limit: str | None, check: bool, yes: bool, as_json: bool,
            break_lock: str | None, **given: Any) -> None:
        params, problems = scenario.check(given)
        if break_lock is not None:
            try:
                break_lock = rules.incident_id(break_lock)
            except rules.BadValue as exc:
                problems = [*problems, f"--break-lock: {exc}"]
        if problems:
            raise BadInput("; ".join(problems))
        extravars = {k: v for k, v in {**params, **scenario.fixed}.items() if v is not None}
        if break_lock:
            extravars["mayday_break_lock"] = break_lock
        run_scenario(scenario, extravars, inventory_name, limit, check, yes, as_json)

    command = target_options(run)
    for param in reversed(scenario.params):
        if param.name in scenario.fixed:
            continue  # the command itself says it (`lease extend`: op=extend)
        option = "--" + param.name.replace("_", "-")
        if param.positional:
            command = click.argument(param.name, required=False)(command)  # missing: refused with the rule's words
        elif param.is_flag:
            command = click.option(option, is_flag=True, default=None, help=param.help)(command)
        elif param.choices:
            command = click.option(option, default=None, help=param.help + " Valid: "
                                   + ", ".join(param.choices()) + ".", required=param.required)(command)
        else:
            shown = f" [default: {param.default}]" if param.default not in (None, False) else ""
            command = click.option(option, default=None, help=param.help + shown)(command)
    return click.command(scenario.command or scenario.name, help=scenario.help)(command)


# A scenario with a group is a subcommand of it: `mayday db read-only`.
GROUP_HELP = {"db": "Database emergencies: pgbouncer reset, long queries, read-only under a lease, back to "
              "read-write, data corruption.",
              "security": "Security incidents: a compromised account, credential rotation (lockdown: `mayday "
                          "lockdown`).",
              "lease": "Leases: temporary emergency changes that the hosts revert at expiry (`mayday status` lists "
                       "them)."}
_groups: dict[str, click.Group] = {}


def default_group(scenario: Scenario) -> click.Group:
    """A group that is also a scenario: `mayday lockdown --isolate` runs it, `mayday lockdown lift` its subcommand."""
    command = scenario_command(scenario)

    @click.pass_context
    def run_unless_subcommand(ctx: click.Context, **kwargs: Any) -> None:
        if ctx.invoked_subcommand is None:
            ctx.invoke(command.callback, **kwargs)  # type: ignore[arg-type]

    return click.Group(scenario.group, help=scenario.help, params=command.params, callback=run_unless_subcommand,
                       invoke_without_command=True)


for _scenario in SCENARIOS.values():
    if not _scenario.group:
        cli.add_command(scenario_command(_scenario))
        continue
    if _scenario.group == _scenario.name:
        _groups[_scenario.group] = default_group(_scenario)
        cli.add_command(_groups[_scenario.group])
        continue
    if _scenario.group not in _groups:
        _groups[_scenario.group] = click.Group(_scenario.group, help=GROUP_HELP.get(_scenario.group))
        cli.add_command(_groups[_scenario.group])
    _groups[_scenario.group].add_command(scenario_command(_scenario))


@cli.command()
@click.option("-i", "--inventory", "inventory_name", default=None, help="Inventory (default: the lab).")
@click.option("--limit", default=None, help="Only these database hosts.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def backups(inventory_name: str | None, limit: str | None, as_json: bool) -> None:
    """List, per database host, the backups, the safety dumps and the kept pre-restore databases."""
    path = inv.resolve(inventory_name)
    if limit:
        inv.load(path).check_limit(limit)
    result = run_playbook("db-backups.yml", path, {}, limit=limit, read_only=True)
    hosts = {r["host"]: r.get("report") or {} for r in result.results if "backups" in r}
    if as_json:
        click.echo(json.dumps({host: {key: report.get(key, []) for key in
                                      ("backups", "safety_backups", "emergency_backups", "kept_databases")}
                               | ({"kept_error": report["kept_error"]} if "kept_error" in report else {})
                               for host, report in hosts.items()}, indent=2))
    else:
        for host, report in hosts.items():
            click.echo(f"{host}:")
            click.echo(f"  {'kind':<9} {'name':<56} {'time':<17} {'size':>10} {'bytes':>14}")
            for item in report.get("items", []):
                click.echo(f"  {item['kind']:<9} {item['name']:<56} {item['time']:<17} {item['size_human']:>10} "
                           f"{item['size']:>14}")
            if not report.get("items"):
                click.echo("  (none)")
            if report.get("kept_error"):
                err.print(f"[yellow]{host}: kept databases not listed: {report['kept_error']}[/]")
    for failure in result.failures:
        err.print(f"[red]- {failure}[/]")
    sys.exit(0 if result.rc == 0 else 1)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("-n", "count", default=20, show_default=True, help="How many recent runs.")
def history(as_json: bool, count: int) -> None:
    """Past runs: scenario, outcome, duration, incident."""
    runs = load_runs()[-count:]
    if as_json:
        click.echo(json.dumps(runs, indent=2))
        return
    if not runs:
        err.print("no runs recorded yet")
        return
    for line in history_lines(runs):
        click.echo(line)


@cli.command()
@click.option("-i", "--inventory", "inventory_name", default=None, help="Inventory (default: the lab).")
@click.option("--local", is_flag=True, help="Only this controller's runs and locks; do not ask the hosts.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(inventory_name: str | None, local: bool, as_json: bool) -> None:
    """Runs in progress and the locks held: who holds them and since when."""
    doc: dict[str, Any] = {"runs": in_progress(), "controller_locks": locks.held_locally(), "host_locks": {}}
    if not local:
        path = inv.resolve(inventory_name)
        result = run_playbook("status.yml", path, {}, read_only=True)
        doc["host_locks"] = {r["host"]: {"lock": r.get("lock"), "holder": r.get("holder") or {}}
                             for r in result.results if r.get("lock")}
        doc["leases"] = {r["host"]: r["leases"] for r in result.results if r.get("leases")}
        doc["unreachable"] = sorted({f.split(":", 1)[0] for f in result.failures})
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(f"runs in progress: {len(doc['runs']) or 'none'}")
    for run in doc["runs"]:
        click.echo(f"  {run['run_id']}  {run.get('scenario')}  incident {run.get('incident') or '-'}  "
                   f"pid {run.get('pid')} on {run.get('controller')} since {run.get('started')}")
    click.echo(f"locks on this controller: {len(doc['controller_locks']) or 'none'}")
    for held in doc["controller_locks"]:
        click.echo(f"  {locks.describe(held)}{'  (stale: its process is gone)' if held['stale'] else ''}")
    if not local:
        held_hosts = {h: v for h, v in doc["host_locks"].items() if v["lock"] != "free"}
        click.echo(f"locks on hosts: {len(held_hosts) or 'none'} of {len(doc['host_locks'])} hosts")
        for host, value in sorted(held_hosts.items()):
            click.echo(f"  {host}: {locks.describe(value['holder']) if value['holder'] else value['lock']}")
        hints = sorted({locks.break_hint(v["holder"]) for v in held_hosts.values() if v["holder"]} - {""})
        for hint in hints:  # held from another controller: how to get past it if that run is gone
            click.echo(f"  {hint.lstrip('; ')}")
        for host in doc.get("unreachable") or []:
            click.echo(f"  {host}: did not answer")
        leased = [(host, lease) for host, found in sorted(doc["leases"].items()) for lease in found]
        click.echo(f"leases (reverted by the host at expiry): {len(leased) or 'none'}")
        for host, lease in leased:
            click.echo(f"  {host}: {lease.get('id')}  {lease.get('what')}  incident {lease.get('incident') or '-'}  "
                       f"expires {lease.get('expires')} (in {lease.get('remaining_s')} s)"
                       + ("" if lease.get("armed") else "  NOT ARMED: the timer is gone"))


@_groups["lockdown"].command("status")
@click.option("-i", "--inventory", "inventory_name", default=None, help="Inventory (default: the lab).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def lockdown_status(inventory_name: str | None, as_json: bool) -> None:
    """The lockdown each host is under: incident, steps, confirmed or until when (read-only)."""
    result = run_playbook("status.yml", inv.resolve(inventory_name), {}, read_only=True)
    found = {r["host"]: r["lockdown"] for r in result.results if "lockdown" in r and "leases" not in r}
    leases = {r["host"]: r["leases"] for r in result.results if r.get("leases")}
    if as_json:
        click.echo(json.dumps({"lockdown": found, "leases": leases}, indent=2))
    else:
        active = {h: r for h, r in sorted(found.items()) if r and not r.get("expired")}
        click.echo(f"lockdown: active on {len(active)} of {len(found)} hosts" if active else "lockdown: none")
        for host, record in active.items():
            until = "confirmed (until lift)" if record.get("confirmed") else ", ".join(
                f"{lease.get('what')} until {lease.get('expires')}" for lease in leases.get(host, [])
                if lease.get("incident") == record.get("incident")) or "no lease left"
            click.echo(f"  {host}: incident {record.get('incident')} since {record.get('started')}: "
                       f"{', '.join(record.get('steps') or [])}; {until}")
    for failure in result.failures:
        err.print(f"[red]- {failure}[/]")
    sys.exit(0 if result.rc == 0 else 1)


@cli.group("evidence")
def evidence_group() -> None:
    """Evidence a security run captured: verify it before it goes to a postmortem or a court."""


@evidence_group.command("verify")
@click.argument("where")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def evidence_verify(where: str, as_json: bool) -> None:
    """Re-hash every capture of an incident (its id, or a directory) against manifests and custody."""
    from mayday import evidence
    from mayday.paths import state_dir

    path = Path(where)
    if not path.exists():
        path = state_dir() / "incidents" / where / "evidence"
    if not path.exists():
        raise BadInput(f"{where!r} is neither a directory nor an incident with evidence in {state_dir() / 'incidents'}")
    captures = evidence.capture_dirs(path)
    problems = evidence.verify(path)
    if as_json:
        click.echo(json.dumps({"path": str(path), "captures": [str(c) for c in captures], "problems": problems},
                              indent=2))
    else:
        for capture in captures:
            click.echo(f"{capture}: {'FAILED' if any(p.startswith(f'{capture}:') for p in problems) else 'verified'}")
        for problem in problems:
            err.print(f"[red]- {problem}[/]")
    sys.exit(1 if problems else 0)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        err.print("aborted")
        sys.exit(2)
    except click.exceptions.ClickException as exc:
        exc.show()
        sys.exit(2)
    except MaydayError as exc:
        err.print(f"[red]mayday: {exc}[/]")
        sys.exit(exc.exit_code)
    except FileNotFoundError as exc:
        err.print(f"[red]mayday: {exc}[/]")
        sys.exit(2)


if __name__ == "__main__":
    main()



