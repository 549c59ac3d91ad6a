"""`edgeloop fleet serve|simulate`, `edgeloop agent`, `edgeloop promote`, `edgeloop rollout status`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from edgeloop.cli.common import console, err_console, guard, prepare, require_prefect_api
from edgeloop.core.settings import Settings
from fleet.admin import admin_token_in_env

if TYPE_CHECKING:
    from edgeloop.core.errors import EdgeloopError
    from edgeloop.core.fleet_address import FleetAddress
    from fleet.admin import AdminClient
    from fleet.shared.admin_protocol import RolloutDetail
    from flows.rollout import RolloutOutcome
    from flows.run_summary import RunSummary

app = typer.Typer()
fleet_app = typer.Typer(help="The fleet controller and the fleet simulator.")
rollout_app = typer.Typer(help="Rollouts on the fleet controller.")
PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


def _connect(url: str | None = None) -> tuple[Settings, FleetAddress, AdminClient]:
    """The settings, the controller's address and an admin client for it (see
    ``edgeloop.core.fleet_address``)."""
    from edgeloop.core import fleet_address
    from fleet.admin import AdminClient

    settings = Settings()
    address = fleet_address.resolve(settings, url)
    return settings, address, AdminClient(address.url, fleet_address.admin_token(settings, address))


def _admin_failure(exc: Exception, address: FleetAddress, hint: str = "") -> EdgeloopError:
    """One error for a refused or unanswered admin call, naming the address and its source."""
    from edgeloop.core.errors import EdgeloopError
    from edgeloop.core.fleet_address import unreachable_hint

    status = getattr(exc, "status", 0)
    if status == 0:
        hint = unreachable_hint(address)
    elif status in (401, 403):
        where = f" or the file {address.token_file}" if address.token_file else ""
        hint = (
            f"the admin token (EDGELOOP_FLEET_ADMIN_TOKEN{where}) is not the one of the "
            f"controller at {address.url} ({address.source})"
        )
    return EdgeloopError(str(exc), hint=hint)


URL_OPTION = typer.Option(
    help="Controller URL (default: where `edgeloop fleet demo` or `edgeloop serve` records it, "
    "else params.yaml).",
)


@fleet_app.command("serve")
def fleet_serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
) -> None:
    """Run the fleet controller (settings from EDGELOOP_FLEET_*; HTTPS with a cert and key)."""

    def go() -> None:
        from fleet.controller.api.serve import serve
        from fleet.controller.settings import FleetSettings

        overrides: dict[str, Any] = {
            k: v for k, v in (("host", host), ("port", port)) if v is not None
        }
        serve(FleetSettings(**overrides))

    guard(go)


@fleet_app.command("demo")
def fleet_demo(
    stop: Annotated[
        bool, typer.Option("--stop", help="Stop the controller the last demo left running.")
    ] = False,
) -> None:
    """After `edgeloop run`: 50 simulated devices, a rollout promoted, one rolled back, drift alerted.

    The controller stays up afterwards so its dashboard shows the result; `--stop` stops it.
    """

    def go() -> None:
        import json

        from edgeloop.core.errors import ConfigError

        settings = Settings()
        prepare(settings)
        if stop:
            from flows.fleet_demo import stop_demo_controller

            stopped = stop_demo_controller(settings)
            console.print(
                "demo controller stopped" if stopped else "no demo controller was running"
            )
            return
        if not settings.last_run_file.is_file():
            raise ConfigError("no candidate yet", hint="run `edgeloop run` first (make demo does)")
        summary = json.loads(settings.last_run_file.read_text())
        if "candidate" not in summary.get("aliases", []):
            raise ConfigError(
                f"{summary.get('model')} v{summary.get('version')} is not a candidate",
                hint="run `edgeloop run` until a version passes every gate",
            )
        from edgeloop.cli.prefect_api import start_prefect_api

        api = start_prefect_api()
        from flows.fleet_demo import DEMO_POLICY, run_fleet_demo
        from flows.retrain import register_flow
        from flows.rollout import rollout_flow

        api.join()

        def register(path: Any, model: str) -> RunSummary:
            return register_flow(
                model_path=path, model_name=model, dataset=summary_dataset, settings=settings
            )

        def rollout(*, url: str, admin_token: str, **kwargs: Any) -> RolloutOutcome:
            with admin_token_in_env(admin_token):
                result = rollout_flow(
                    settings=settings,
                    rollout_overrides={**DEMO_POLICY, "controller_url": url},
                    **kwargs,
                )
            colour = "green" if result.outcome == "succeeded" else "red"
            console.print(
                f"  rollout of v{result.version}: [{colour}]{result.outcome}[/] "
                f"{escape(headline(result))}",
                highlight=False,
            )
            return result

        from edgeloop.core.params import load_params

        summary_dataset = load_params(settings.params_file).data.loader
        fleet = run_fleet_demo(
            settings,
            str(summary["version"]),
            register,
            rollout,
            lambda line: console.print(escape(line), highlight=False),
            keep_running=True,
        )
        summary["fleet"] = fleet.model_dump(mode="json")
        settings.last_run_file.write_text(json.dumps(summary, indent=2, default=str))
        console.print(
            f"fleet: {fleet.fleet_versions} devices by version; production is "
            f"v{fleet.production}; summary in {settings.last_run_file}",
            highlight=False,
        )
        console.print(
            f"dashboard: {fleet.controller}/dashboard (sign in with the token in "
            f"{fleet.admin_token_file}); the controller keeps running until "
            "`edgeloop fleet demo --stop`",
            highlight=False,
            soft_wrap=True,
        )

    guard(go)


@fleet_app.command("simulate", context_settings=PASSTHROUGH, add_help_option=False)
def fleet_simulate(ctx: typer.Context) -> None:
    """Simulate edge devices against a controller (python -m fleet.simulate.fleet --help)."""
    from fleet.simulate.fleet import main as simulate_main

    raise typer.Exit(simulate_main(list(ctx.args)))


@app.command("agent", context_settings=PASSTHROUGH, add_help_option=False)
def agent(ctx: typer.Context) -> None:
    """Run the edge agent on this device (settings from EDGELOOP_AGENT_*; see --help)."""
    from fleet.agent.agent import main as agent_main

    raise typer.Exit(agent_main(list(ctx.args)))


@app.command()
def promote(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="Version to promote to production.")],
    url: Annotated[str | None, URL_OPTION] = None,
) -> None:
    """Set alias production on a version and roll it out to the fleet, following it to the end.

    All or nothing: when the rollout cannot start (no device enrolled, controller down), production
    goes back to the version it was on and no rollout is left behind."""

    def go() -> None:
        from edgeloop.core import fleet_address

        settings = Settings()
        prepare(settings)
        address = fleet_address.resolve(settings, url)
        token = fleet_address.admin_token(settings, address)
        from edgeloop.cli.prefect_api import start_prefect_api
        from registry.outcomes import production_version, restore_production
        from registry.outcomes import promote as set_production
        from registry.tracking import connect

        client = connect(settings.tracking_uri)
        stable = production_version(client, name)
        why = set_production(client, name, version, rollout_by="edgeloop promote")
        console.print(f"{name} v{version} is production ({why}); rolling out…", highlight=False)
        api = start_prefect_api()
        from flows.rollout import rollout_flow

        api.join()
        watcher = _LiveRollout(address.url, token, name, version)
        try:
            with watcher, admin_token_in_env(token):
                result = rollout_flow(
                    model=name, version=version, stable_version=stable, settings=settings,
                    rollout_overrides={"controller_url": address.url},
                )  # fmt: skip
        except KeyboardInterrupt:
            followed = watcher.rollout_id or "ID"
            err_console.print(
                f"stopped following; the rollout keeps running on {address.url}. Follow it with "
                f"`edgeloop rollout status {followed} --watch`, stop it with `edgeloop rollout "
                f"abort {followed}` (the registry follower, `edgeloop registry follow`, writes its "
                "outcome to the registry)",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(130) from None
        except Exception:
            if watcher.rollout_id is None:  # nothing started: all or nothing
                restore_production(client, name, stable, replacing=version)
            raise
        colour = "green" if result.outcome == "succeeded" else "red"
        console.print(
            f"rollout {result.rollout_id}: [{colour}]{result.outcome}[/] {escape(headline(result))}",
            highlight=False,
        )
        if result.outcome != "succeeded":
            err_console.print(
                f"[red]error:[/] {name} v{version} was not rolled out: {escape(headline(result))}; "
                f"production is back on v{result.stable_version}",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(4)

    guard(go)


@app.command()
def approve(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="The version a retrain waits about.")],
    reject: Annotated[
        bool, typer.Option("--reject", help="Refuse: the candidate is not promoted.")
    ] = False,
    note: Annotated[str, typer.Option(help="Why, recorded with the answer.")] = "",
) -> None:
    """Answer a retrain paused for a person (schedule.approval): promote the version, or not.

    The run waiting is found on the version (tag edgeloop.promote.waiting); Prefect's API is
    PREFECT_API_URL (the server `edgeloop serve` runs)."""

    def go() -> None:
        settings = Settings()
        prepare(settings)
        require_prefect_api(settings, "answering a paused retrain")
        from flows.approval import answer
        from registry.tracking import connect

        run_id = answer(connect(settings.tracking_uri), name, version, not reject, note)
        said = "rejected" if reject else "approved"
        console.print(f"{name} v{version} {said}; flow run {run_id} goes on", highlight=False)

    guard(go)


class _LiveRollout:
    """While a promotion's flow runs: the rollout's live table (``rollout status --watch``'s), read
    from the controller every second in a thread of its own; ``rollout_id`` once it exists."""

    def __init__(self, url: str, token: str, model: str, version: str) -> None:
        import threading

        self.url, self.token, self.model, self.version = url, token, model, version
        self.rollout_id: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="live-rollout", daemon=True)

    def __enter__(self) -> _LiveRollout:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _watch(self) -> None:
        from rich.live import Live

        from fleet.admin import AdminClient, AdminError
        from fleet.controller.rollout.phase import RolloutPhase

        admin = AdminClient(self.url, self.token)
        try:
            with Live(console=console, auto_refresh=False, transient=False) as live:
                while not self._stop.wait(1.0):
                    try:
                        if self.rollout_id is None:
                            self.rollout_id = next(
                                (
                                    r.rollout_id
                                    for r in reversed(admin.rollouts())
                                    if r.model == self.model
                                    and r.version == self.version
                                    and not RolloutPhase(r.phase).is_terminal()
                                ),
                                None,
                            )
                        if self.rollout_id is not None:
                            live.update(_status_table(admin.rollout(self.rollout_id)), refresh=True)
                    except AdminError:
                        continue  # the flow reports the controller's failures itself
        finally:
            admin.close()


@fleet_app.command("pull-field-data")
def fleet_pull_field_data(
    url: Annotated[str | None, URL_OPTION] = None,
) -> None:
    """Write the fleet's new labelled field samples to data/field/ as a new DVC-tracked version."""

    def go() -> None:
        from pathlib import Path

        from edgeloop.core import fleet_address
        from edgeloop.core.params import load_params
        from flows.field_data import pull, require_schema

        settings = Settings()
        params = load_params(settings.params_file)
        address = fleet_address.resolve(settings, url)
        result = pull(
            address.url,
            fleet_address.admin_token(settings, address),
            model=params.model_name,
            schema=require_schema(settings.splits_dir),
            field_dir=Path(params.data.field_dir),
        )
        if result.path is None:
            console.print(f"no new labelled field samples of {params.model_name}")
            return
        console.print(
            f"wrote {result.samples} labelled field samples (ids {result.since + 1}-"
            f"{result.last_id}) to {result.path}; tracked by DVC (commit {result.path}.dvc)"
            + (
                ""
                if params.data.include_field
                else "; set data.include_field: true to train on them"
            ),
            highlight=False,
        )

    guard(go)


@rollout_app.command("status")
def rollout_status(
    rollout_id: Annotated[
        str | None, typer.Argument(help="A rollout id; all when left out.")
    ] = None,
    url: Annotated[str | None, URL_OPTION] = None,
    watch: Annotated[
        bool, typer.Option("--watch", help="Refresh until every shown rollout has ended.")
    ] = False,
    interval: Annotated[
        float, typer.Option(min=0.1, help="Seconds between refreshes with --watch.")
    ] = 2.0,
) -> None:
    """Show rollouts: phase, stage, and per cohort the devices confirmed and each gate's value."""

    def go() -> None:
        import time

        from rich.console import Group
        from rich.live import Live

        from fleet.admin import AdminError
        from fleet.controller.rollout.phase import RolloutPhase

        _, address, admin = _connect(url)

        def view() -> tuple[Group, bool]:
            ids = [rollout_id] if rollout_id else [r.rollout_id for r in admin.rollouts()]
            details = [admin.rollout(i) for i in ids]
            ended = all(RolloutPhase(d.phase).is_terminal() for d in details)
            return Group(*(_status_table(d) for d in details)), ended

        try:
            shown, ended = view()
            if not watch:
                console.print(shown)
                return
            with Live(shown, console=console, auto_refresh=False) as live:
                while not ended:
                    time.sleep(interval)
                    shown, ended = view()
                    live.update(shown, refresh=True)
        except AdminError as exc:
            raise _admin_failure(
                exc, address, "check the rollout id (`edgeloop rollout status` lists every one)"
            ) from exc
        finally:
            admin.close()

    guard(go)


def _rollout_command(command: str, rollout_id: str, reason: str, url: str | None) -> None:
    def go() -> None:
        from fleet.admin import AdminError

        _, address, admin = _connect(url)
        try:
            detail = admin.command(rollout_id, command, reason)
        except AdminError as exc:
            raise _admin_failure(
                exc,
                address,
                f"`edgeloop rollout status {rollout_id}` shows where it stands and what it allows",
            ) from exc
        finally:
            admin.close()
        console.print(
            f"rollout {detail.rollout_id}: {detail.phase} ({escape(detail.reason or '')})",
            highlight=False,
        )

    guard(go)


REASON_OPTION = typer.Option(help="Why, for the rollout's history.")


@rollout_app.command("pause")
def rollout_pause(
    rollout_id: Annotated[str, typer.Argument(help="The rollout id.")],
    reason: Annotated[str, REASON_OPTION] = "paused by an operator",
    url: Annotated[str | None, URL_OPTION] = None,
) -> None:
    """Hold a rollout in its stage: no promotion, no deadline; a failing gate still rolls back."""
    _rollout_command("pause", rollout_id, reason, url)


@rollout_app.command("resume")
def rollout_resume(
    rollout_id: Annotated[str, typer.Argument(help="The rollout id.")],
    url: Annotated[str | None, URL_OPTION] = None,
) -> None:
    """Resume a paused rollout; its stage's window starts again."""
    _rollout_command("resume", rollout_id, "", url)


@rollout_app.command("abort")
def rollout_abort(
    rollout_id: Annotated[str, typer.Argument(help="The rollout id.")],
    reason: Annotated[str, REASON_OPTION] = "aborted by an operator",
    url: Annotated[str | None, URL_OPTION] = None,
) -> None:
    """Abort a rollout: every device it targeted goes back to the stable version."""
    _rollout_command("abort", rollout_id, reason, url)


@fleet_app.command("retire")
def fleet_retire(
    device_ids: Annotated[
        list[str] | None, typer.Argument(help="Devices to take out of the fleet.")
    ] = None,
    silent_for: Annotated[
        float | None,
        typer.Option(min=0, help="Also every device not heard from for this many seconds."),
    ] = None,
    url: Annotated[str | None, URL_OPTION] = None,
) -> None:
    """Take devices out of the fleet: their credentials stop working and rollouts no longer count
    or target them (their history stays on the dashboard)."""

    def go() -> None:
        from edgeloop.core.errors import ConfigError
        from fleet.admin import AdminError

        if not device_ids and silent_for is None:
            raise ConfigError(
                "no device to retire", hint="name device ids, or pass --silent-for SECONDS"
            )
        _, address, admin = _connect(url)
        try:
            result = admin.retire_devices(list(device_ids or []), silent_for)
        except AdminError as exc:
            raise _admin_failure(exc, address) from exc
        finally:
            admin.close()
        shown = ", ".join(result.retired[:20]) + (" …" if len(result.retired) > 20 else "")
        console.print(f"retired {len(result.retired)} device(s): {shown or '-'}", highlight=False)

    guard(go)


@fleet_app.command("token")
def fleet_token(
    action: Annotated[str, typer.Argument(help="create | list | revoke")],
    token_id: Annotated[int | None, typer.Argument(help="revoke: the token's id")] = None,
    uses: Annotated[int, typer.Option(min=1, max=100_000, help="Devices it may enrol.")] = 1,
    ttl: Annotated[
        int, typer.Option(min=60, max=30 * 86_400, help="Seconds until it expires.")
    ] = 86_400,
    hardware_class: Annotated[
        str | None, typer.Option("--class", help="Only devices of this hardware class.")
    ] = None,
    device_id: Annotated[
        str | None, typer.Option(help="Only the device of this id (one use).")
    ] = None,
    device_prefix: Annotated[
        str | None, typer.Option(help="Only device ids that begin with this.")
    ] = None,
    url: Annotated[str | None, URL_OPTION] = None,
) -> None:
    """Enrolment tokens: `create --uses 5 [--device-prefix cam-]`, `list`, `revoke ID`."""

    def go() -> None:
        from edgeloop.core.errors import ConfigError
        from fleet.admin import AdminError

        if action not in {"create", "list", "revoke"} or (action == "revoke") != (
            token_id is not None
        ):
            raise ConfigError(
                f"unknown action {action!r}" if action not in {"create", "list", "revoke"}
                else "revoke takes the token's id (and only revoke does)",
                hint="edgeloop fleet token create | list | revoke ID",
            )  # fmt: skip
        settings, address, admin = _connect(url)
        try:
            if action == "list":
                _print_tokens(admin.enrolment_tokens())
                return
            if action == "revoke":
                assert token_id is not None
                admin.revoke_enrolment_token(token_id)
                console.print(f"revoked enrolment token {token_id}", highlight=False)
                return
            token = admin.enrolment_token(
                uses, ttl, hardware_class, device_id=device_id, device_prefix=device_prefix
            )
        except AdminError as exc:
            raise _admin_failure(exc, address) from exc
        finally:
            admin.close()
        console.print(token.token, highlight=False, soft_wrap=True)
        bound = (
            f"device {device_id}" if device_id
            else f"{token.uses} device(s) with ids {device_prefix}*" if device_prefix
            else f"{token.uses} device(s)"
        )  # fmt: skip
        err_console.print(
            f"enrolment token {token.token_id} for {bound} of "
            f"{hardware_class or 'any class'}, until {token.expires_at:%Y-%m-%d %H:%M %Z}; on the "
            f"device: EDGELOOP_AGENT_CONTROLLER_URL={address.url} "
            "EDGELOOP_AGENT_ENROLMENT_TOKEN=<the token> edgeloop agent (a device not on this "
            "machine also pins the registry's key: EDGELOOP_AGENT_PUBLIC_KEY_FILE=<a copy of "
            f"{settings.keys_dir / 'signing-ed25519.pub.pem'}>)",
            highlight=False,
            soft_wrap=True,
        )

    guard(go)


def _print_tokens(tokens: list[Any]) -> None:
    table = Table(title=f"{len(tokens)} enrolment token(s) that can still enrol")
    for column in ("id", "uses left", "expires", "class", "device id", "id prefix"):
        table.add_column(column)
    for t in tokens:
        table.add_row(
            str(t.token_id), str(t.uses_left), f"{t.expires_at:%Y-%m-%d %H:%M %Z}",
            t.hardware_class or "any", t.device_id or "-", t.device_prefix or "-",
        )  # fmt: skip
    console.print(table)


def headline(outcome: RolloutOutcome) -> str:
    """One line for a rollout's outcome: the failed gates with their values against their limits,
    else the first clause of the reason (`edgeloop rollout status` shows all of it)."""
    if outcome.causes:
        return "; ".join(
            f"{c.gate} failed on {c.cohort}: {gate_value(c.gate, c.measured)} against "
            f"{gate_value(c.gate, c.threshold)}"
            for c in outcome.causes
        )
    first = outcome.reason.split("; ")[0]
    return first if len(first) <= 160 else first[:159] + "…"


def gate_value(gate: str, value: float | None) -> str:
    """A gate's measured value or limit as people read it: ms, percent, points."""
    if value is None:
        return "-"
    if gate == "p95_latency":
        return f"{value:.3g} ms"
    if gate in ("error_rate", "agreement"):
        return f"{value:.2%}"
    if gate == "accuracy":
        return f"{value * 100:+.1f} pts"
    if gate == "mae":
        return f"{value:+.3g} MAE"  # the difference canary - stable, in the target's units
    if gate == "prediction_shift":
        return f"{value:.3f} TV"
    return f"{value:.3g}"


def _status_table(detail: RolloutDetail) -> Table:
    from fleet.controller.rollout.decide import RolloutStatus

    title = (
        f"rollout {detail.rollout_id}: {detail.model} v{detail.version} "
        f"(stable v{detail.stable_version}) {detail.phase}, {detail.stage}"
    )
    status = RolloutStatus.model_validate(detail.status) if detail.status else None
    caption = detail.reason or ""
    silent = status.silent_devices if status is not None else ()
    if silent:
        caption += f"\nsilent devices ({len(silent)}): {', '.join(silent[:20])}"
        caption += " ..." if len(silent) > 20 else ""
    table = Table(title=title, caption=escape(caption), box=box.SIMPLE_HEAD)
    for column in ("cohort", "devices", "data", "gate", "verdict", "measured", "limit"):
        table.add_column(column, overflow="fold")  # wrapped at 80 columns, never cut
    check = status.last_check if status is not None else None
    for cohort in check.cohorts if check is not None else ():
        data = (
            f"{cohort.inferences}/{cohort.required_inferences} inferences, "
            f"{cohort.feedback}/{cohort.required_feedback} labels"
            + (f", {cohort.shadow_compared} compared" if cohort.shadow_compared else "")
        )
        devices = f"{cohort.confirmed}/{cohort.required_confirmed} of {cohort.targeted}"
        for i, gate in enumerate(cohort.gates):
            first = i == 0
            table.add_row(
                cohort.hardware_class if first else "", devices if first else "",
                data if first else "", str(gate.gate), str(gate.verdict),
                gate_value(gate.gate, gate.measured), gate_value(gate.gate, gate.threshold),
            )  # fmt: skip
    return table
