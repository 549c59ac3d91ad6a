"""What every benchmark records about the machine, and how it writes its JSON; and the pieces the
controller benchmarks share (rollback_reaction, telemetry_ingest, artifact_download, dashboard_load):
a controller process (or several replicas on one PostgreSQL database), a scratch database, device
enrolment, and the CPU seconds and memory of a process read from ``/proc``."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/x.py` puts bench/ on the path, not the repository
    sys.path.insert(0, str(REPO))

from fleet.shared.ports import free_port  # noqa: E402
from fleet.shared.signature import ReleaseClaim  # noqa: E402
from registry.signing import public_pem, sign_claim  # noqa: E402

PACKAGES = ("onnxruntime", "numpy", "torch", "prefect", "mlflow")


def machine_info(packages: tuple[str, ...] = PACKAGES) -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "processor": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        **versions,
    }


def write_report(
    console: Console,
    out: Path,
    result: dict[str, Any],
    root: Path | None = None,
    keep: bool = False,
) -> None:
    """Write the JSON result; remove the scratch folder unless asked to keep it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    console.print(f"wrote {out}", highlight=False)
    if root is None:
        return
    if keep:
        console.print(f"kept {root}", highlight=False)
    else:
        shutil.rmtree(root, ignore_errors=True)


def write_result(
    console: Console,
    name: str,
    fields: dict[str, Any],
    root: Path | None = None,
    keep: bool = False,
) -> None:
    """Write ``.edgeloop/bench/<name>.json``: the benchmark, when, the machine, then ``fields``."""
    result = {
        "benchmark": name,
        "at": datetime.now(UTC).isoformat(),
        "machine": machine_info(),
        **fields,
    }
    write_report(console, Path(".edgeloop") / "bench" / f"{name}.json", result, root, keep)


def p50_results(rounds: Mapping[str, Sequence[Any]], baseline: str) -> dict[str, dict[str, Any]]:
    """Per call: the median over rounds of its p50 and p95 (``LatencyStats``), each round, and
    ``p50_ratio``, its p50 over ``baseline``'s."""
    results: dict[str, dict[str, Any]] = {
        name: {
            "p50_ms": float(np.median([r.p50_ms for r in stats])),
            "p95_ms": float(np.median([r.p95_ms for r in stats])),
            "rounds": [vars(r) for r in stats],
        }
        for name, stats in rounds.items()
    }
    for r in results.values():
        r["p50_ratio"] = r["p50_ms"] / results[baseline]["p50_ms"]
    return results


def p50_table(
    title: str, first: str, results: Mapping[str, Mapping[str, Any]], baseline: str
) -> Table:
    """The :func:`p50_results` as a table: p50, p95 and the p50 ratio to ``baseline``."""
    table = Table(title=title)
    for column in (first, "p50 ms", "p95 ms", f"p50 / {baseline}"):
        table.add_column(column)
    for name, r in results.items():
        table.add_row(name, f"{r['p50_ms']:.4f}", f"{r['p95_ms']:.4f}", f"{r['p50_ratio']:.3f}")
    return table


def load_average() -> str:
    """``uptime``'s three numbers, for a result table: every figure is read next to it."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


# --- the controller process --------------------------------------------------------------------

ADMIN = "bench-admin-token"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}
SIGNING_KEY = Ed25519PrivateKey.generate()
CLS = "host-cpu"


def signed_upload(
    model: str, version: str, data: bytes | None = None
) -> tuple[dict[str, Any], bytes]:
    """The query of ``POST /v1/artifacts`` for a variant of ``model`` ``version`` for :data:`CLS`,
    signed with this run's key, and its bytes (a few KiB of filler unless ``data`` is given)."""
    import hashlib

    if data is None:
        data = f"model {model} {version}".encode() * 64
    sha256 = hashlib.sha256(data).hexdigest()
    claim = ReleaseClaim(model, version, VARIANT, sha256, int(version))
    params = {
        "model": model,
        "version": version,
        "variant": VARIANT,
        "hardware_class": CLS,
        "sha256": sha256,
        "signature": sign_claim(SIGNING_KEY, claim),
        "release": claim.release,
    }
    return params, data


def held_rollout(model: str, shadow: dict[str, Any] | None = None) -> dict[str, Any]:
    """The body of ``POST /v1/rollouts`` for v2 over v1 of ``model`` that stays in its first stage
    for the whole benchmark (99% of the devices, an hour's bake, two hours' deadline)."""
    stage = {
        "fraction": 0.99, "bake_s": 3600, "deadline_s": 7200, "min_confirmed_devices": 1,
        "min_confirmed_fraction": 0.5, "min_inferences": 1, "min_feedback": 0,
    }  # fmt: skip
    policy: dict[str, Any] = {
        "cohorts": {CLS: {"p95_latency_ms": 50}},
        "stages": [stage, {**stage, "fraction": 1.0}],
        "gates": {
            "max_error_rate": 0.05,
            "accuracy": {"delta": 0.02, "alpha": 0.05, "min_samples": 50},
        },
    }
    if shadow is not None:
        policy["shadow"] = shadow
    return {"model": model, "version": "2", "stable_version": "1", "policy": policy}


VARIANT = f"{CLS}-int8"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) so far, from ``/proc/<pid>/stat``."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14 and 15)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def mem_available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024**2
    return float("nan")


def own_cpu_seconds() -> float:
    """CPU seconds of this process and of its children that ended (client worker processes)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@dataclass
class ControllerProcess:
    root: Path
    db_url: str
    port: int
    cpus: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    env_extra: dict[str, str] = field(default_factory=dict)
    name: str = "controller"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> ControllerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGELOOP_")}
        env.update(
            PYTHONPATH=str(REPO),
            EDGELOOP_FLEET_DB_URL=self.db_url,
            EDGELOOP_FLEET_ADMIN_TOKEN=ADMIN,
            EDGELOOP_FLEET_PUBLIC_KEY_PATH=str(self._public_key()),
            EDGELOOP_FLEET_PORT=str(self.port),
            **self.env_extra,
        )
        cpus = self.cpus

        def prepare() -> None:
            raise_nofile()
            if cpus:
                os.sched_setaffinity(0, set(range(min(cpus, os.cpu_count() or 1))))

        self.log = self.root / f"{self.name}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fleet.controller.api.serve"],
                cwd=self.root,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=prepare,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"controller exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.base}/v1/health", timeout=2).is_success:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("controller not healthy after 60 s")

    def rss_mib(self) -> float:
        return rss_mib(self.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def admin(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {**ADMIN_HEADERS, **kwargs.pop("headers", {})}
        r = httpx.request(method, self.base + path, headers=headers, timeout=300, **kwargs)
        if r.status_code >= 300:
            raise RuntimeError(f"{method} {path}: {r.status_code} {r.text[:500]}")
        return r.json()

    def _public_key(self) -> Path:
        """The signing key of this run's registry (the controller checks every artifact)."""
        path = self.root / "registry.pub.pem"
        path.write_bytes(public_pem(SIGNING_KEY))
        return path

    def register(self, model: str, version: str, data: bytes | None = None) -> dict[str, Any]:
        """Upload a signed variant of ``model`` ``version`` for :data:`CLS` (a few KiB of filler
        unless ``data`` is given); the controller checks the signature against this run's key."""
        params, data = signed_upload(model, version, data)
        headers = {"Content-Type": "application/octet-stream"}
        answer: dict[str, Any] = self.admin(
            "POST", "/v1/artifacts", params=params, content=data, headers=headers
        )
        return answer


def start_replicas(
    root: Path,
    db_url: str,
    count: int,
    env_extra: Mapping[str, str],
    cpus: int | None = None,
) -> list[ControllerProcess]:
    """``count`` controller processes on one database, started one after the other (the first
    migrates it). More than one needs PostgreSQL: a SQLite file serves one process."""
    if count > 1 and not db_url.startswith("postgresql"):
        raise SystemExit("--replicas > 1 needs PostgreSQL: --db-url postgresql+psycopg://...")
    started: list[ControllerProcess] = []
    try:
        for i in range(count):
            name = "controller" if count == 1 else f"replica{i}"
            ctl = ControllerProcess(root, db_url, free_port(), cpus, env_extra=dict(env_extra))
            ctl.name = name
            started.append(ctl.start())
    except BaseException:
        stop_all(started)
        raise
    return started


def stop_all(controllers: Sequence[ControllerProcess]) -> None:
    for ctl in controllers:
        ctl.stop()


@contextmanager
def scratch_database(
    db_url: str | None, root: Path, name: str, fresh: bool, keep: bool = False
) -> Iterator[str]:
    """The database a benchmark runs on: SQLite in ``root`` when ``db_url`` is None; ``db_url``
    itself; or, with ``fresh`` and a PostgreSQL URL, a new database ``<name>_<pid>`` on that server,
    dropped at the end unless ``keep`` (so every run starts empty)."""
    if db_url is None:
        yield f"sqlite:///{root / 'fleet.db'}"
        return
    if not fresh:
        yield db_url
        return
    from sqlalchemy import create_engine, make_url, text

    from fleet.controller.storage.db import normalise_url

    url = make_url(normalise_url(db_url))
    database = f"{name}_{os.getpid()}"
    server = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with server.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{database}"'))
    try:
        yield url.set(database=database).render_as_string(hide_password=False)
    finally:
        if keep:
            print(f"kept the database {database}", file=sys.stderr)
        else:
            with server.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        server.dispose()


def postgres_sessions(db_url: str) -> dict[int, float]:
    """PostgreSQL backends serving ``db_url``'s database now: pid → CPU seconds so far (read from
    ``/proc``, so only for a server on this host; empty otherwise)."""
    from sqlalchemy import text

    from fleet.controller.storage.db import make_engine

    engine = make_engine(db_url)
    try:
        with engine.connect() as connection:
            pids = connection.execute(
                text(
                    "select pid from pg_stat_activity "
                    "where datname = current_database() and pid <> pg_backend_pid()"
                )
            ).scalars()
            found: dict[int, float] = {}
            for pid in pids:
                with suppress(OSError):
                    found[int(pid)] = cpu_seconds(int(pid))
            return found
    finally:
        engine.dispose()


def postgres_cpu_delta(before: Mapping[int, float], after: Mapping[int, float]) -> float:
    """CPU seconds PostgreSQL's backends for a database spent between two :func:`postgres_sessions`
    (a backend that ended in between is not counted; the controllers' pools keep theirs)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


async def enrol_all(base: str | Sequence[str], token: str, n: int, prefix: str) -> dict[str, str]:
    """Enrol ``n`` devices (``<prefix>-00000``, ...), round-robin over the replicas in ``base``."""
    bases = [base] if isinstance(base, str) else list(base)
    sem = asyncio.Semaphore(64)
    creds: dict[str, str] = {}
    sessions = [aiohttp.ClientSession(b, connector=aiohttp.TCPConnector(limit=64)) for b in bases]
    try:

        async def one(i: int) -> None:
            device = f"{prefix}-{i:05d}"
            async with sem:
                body = {"token": token, "device_id": device, "hardware_class": CLS}
                async with sessions[i % len(sessions)].post("/v1/enrol", json=body) as r:
                    r.raise_for_status()
                    creds[device] = (await r.json())["credential"]

        await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        for http in sessions:
            await http.close()
    return creds


def latency_counts() -> dict[str, list[float] | list[int]]:
    from fleet.shared.latency import LATENCY_BOUNDS_MS, LatencyHistogram

    hist = LatencyHistogram.of([1.0] * 100, LATENCY_BOUNDS_MS)
    return {"bounds_ms": list(hist.bounds_ms), "counts": list(hist.counts)}


def seed_devices(db_url: str, n: int, prefix: str) -> dict[str, str]:
    """Enrol ``n`` devices straight into a migrated database (what ``/v1/enrol`` stores: the device
    with the sha256 of a fresh credential, and its empty desired state), for fleets too large to
    enrol through the API in a short run (every enrolment spends a use of one token row, so they
    queue on that row). Returns device id → credential."""
    import secrets

    from sqlalchemy import insert

    from fleet.controller.storage import db
    from fleet.controller.storage.store import hash_secret

    now = datetime.now(UTC)
    creds = {f"{prefix}-{i:05d}": secrets.token_urlsafe(32) for i in range(n)}
    engine = db.make_engine(db_url)
    try:
        with engine.begin() as connection:
            ids = list(creds)
            for start in range(0, n, 5000):
                chunk = ids[start : start + 5000]
                connection.execute(
                    insert(db.DeviceRow),
                    [
                        {
                            "device_id": d,
                            "hardware_class": CLS,
                            "labels": {},
                            "credential_hash": hash_secret(creds[d]),
                            "enrolled_at": now,
                            "last_seen": None,
                        }
                        for d in chunk
                    ],
                )
                connection.execute(
                    insert(db.DesiredStateRow),
                    [{"device_id": d, "revision": 0, "updated_at": now} for d in chunk],
                )
    finally:
        engine.dispose()
    return creds
