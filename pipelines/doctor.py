"""The Dagster part of ``visionforge doctor``: the instance in ``DAGSTER_HOME`` (PostgreSQL in a
deployment, SQLite by default) is reachable, accepts its credentials and can be written, and the
code location (``pipelines.definitions``) loads in this environment.

Prints one JSON line, a list of :class:`ops.doctor.Check`; ``visionforge doctor`` runs it in a
child process so that the library stays free of Dagster.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from dataclasses import asdict
from pathlib import Path

from ops.doctor import Check
from ops.storage import redact

SYSTEM = "dagster"
PROBE_KEY = "visionforge/doctor_checked_at"


def _postgres_fix(message: str) -> str:
    lowered = message.lower()
    if "password authentication failed" in lowered or "no password supplied" in lowered:
        return "PostgreSQL refused the credentials -> fix: DAGSTER_POSTGRES_USER / DAGSTER_POSTGRES_PASSWORD"
    if "does not exist" in lowered and "database" in lowered:
        return "no such database -> fix: DAGSTER_POSTGRES_DB (or create it)"
    if "connection refused" in lowered or "could not connect" in lowered or "timeout" in lowered:
        return (
            "PostgreSQL unreachable -> fix: DAGSTER_POSTGRES_HOST / DAGSTER_POSTGRES_PORT, and that it runs"
        )
    return "PostgreSQL error -> fix: the storage section of $DAGSTER_HOME/dagster.yaml"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _cause(exc: BaseException) -> str:
    """The deepest message in the chain: Dagster wraps PostgreSQL's own reason ("password
    authentication failed") in "too many retries for DB connection"."""
    seen: set[int] = set()
    while id(exc) not in seen and (exc.__cause__ or exc.__context__) is not None:
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return _first_line(exc)


def _unset_variables(home: Path) -> list[str]:
    """Environment variables ``dagster.yaml`` reads (``{env: NAME}``) that are not set: Dagster's
    own error for them is a dump of its config schema."""
    config = home / "dagster.yaml"
    if not config.is_file():
        return []
    names = re.findall(r"\{\s*env:\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}", config.read_text())
    return sorted({name for name in names if not os.environ.get(name)})


def check_instance() -> Check:
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        return Check(
            SYSTEM, "-", "warn", "DAGSTER_HOME is not set: runs would be kept in a temporary directory "
            "-> fix: export DAGSTER_HOME (make ui and make demo use .dagster)"
        )  # fmt: skip
    unset = _unset_variables(Path(home))
    if unset:
        return Check(
            SYSTEM,
            home,
            "fail",
            f"{home}/dagster.yaml reads unset environment variables -> fix: set {', '.join(unset)}",
        )
    from dagster import DagsterInstance

    target = home
    try:
        instance = DagsterInstance.get()
        storage = instance.run_storage
        url = getattr(storage, "postgres_url", None)
        target = redact(url) if url else f"SQLite in {home}"
        instance.get_runs_count()
        storage.set_cursor_values({PROBE_KEY: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    except Exception as exc:  # Dagster and SQLAlchemy raise many types; the message says which
        message = _cause(exc)
        config = Path(home) / "dagster.yaml"
        on_postgres = config.is_file() and "postgres" in config.read_text()
        fix = _postgres_fix(message) if on_postgres else ""
        return Check(SYSTEM, target, "fail", redact(message + (f" ({fix})" if fix else "")))
    return Check(SYSTEM, target, "ok", "instance storage reachable, authenticated, writable")


def check_code_location() -> Check:
    """What the code server would load, loaded here: a failure names its setting where it is ours
    (``VISIONFORGE_RETRAIN_CRON``, ``VISIONFORGE_SENSOR_INTERVAL_S``, ``params.yaml``)."""
    target = "pipelines.definitions"
    try:
        from pipelines import definitions

        repository = definitions.defs.get_repository_def()
    except Exception as exc:  # an import or definition error of any kind: say which
        return Check(
            "code", target, "fail", redact(f"does not load: {type(exc).__name__}: {_first_line(exc)}")
        )
    return Check(
        "code",
        target,
        "ok",
        f"loads: {len(definitions.ASSETS)} assets, {len(repository.schedule_defs)} schedules, "
        f"{len(repository.sensor_defs)} sensors",
    )


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    checks = [check_instance(), check_code_location()]
    print(json.dumps([asdict(check) for check in checks]))
    return 1 if any(check.status == "fail" for check in checks) else 0


if __name__ == "__main__":
    raise SystemExit(main())
