"""The scale variant's databases in an archive (mlops_pipeline/backup/engines.py) on a real PostgreSQL 15, made by
postgres/init-databases.sh as the scale stack makes it: pg_dump while rows are written, the restore with every
owner and grant, and a failure at each step leaving every database as it was. The buckets and the compose round
trip are tests/compose/test_scale.py's."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import wait_for
from mlops_pipeline.backup import engines as engine
from mlops_pipeline.backup import restore as restore_module
from mlops_pipeline.backup.archive import BackupError, dump
from mlops_pipeline.backup.restore import read, restore
from test_backup import KEY, checksums

PG_BIN = Path("/usr/lib/postgresql/15/bin")  # Debian's postgresql-15 (.ci/run installs it), the server's major
ROOT = Path(__file__).resolve().parents[1]
PASSWORDS = {
    "AIRFLOW_DB_PASSWORD": "a" * 24,
    "MLFLOW_DB_PASSWORD": "m" * 24,
    "INFERENCE_LOG_WRITER_PASSWORD": "w" * 24,
    "INFERENCE_LOG_READER_PASSWORD": "r" * 24,
}


def as_postgres(*cmd: str) -> None:
    """initdb and the server refuse root: run them as the postgres user when the tests run as root."""
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run([*prefix, *cmd], check=True, capture_output=True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """A throwaway PostgreSQL on 127.0.0.1, trusted for the superuser (libpq's PG* variables point at it)."""
    if not (PG_BIN / "initdb").exists():
        if os.environ.get("REQUIRE_DOCKER") == "1":
            pytest.fail(f"REQUIRE_DOCKER=1 but {PG_BIN}/initdb is missing (apt-get install postgresql-15)")
        pytest.skip(f"no PostgreSQL 15 at {PG_BIN}")
    base = Path(tempfile.mkdtemp(prefix="pg-"))  # not under pytest's root-only folder: the postgres user runs in it
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = base / "data"
    as_postgres(str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
    as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(base / "log"), "-w", "start")
    saved = {k: os.environ.get(k) for k in ("PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PATH")}
    os.environ.update(PGHOST="127.0.0.1", PGPORT=str(port), PGUSER="postgres", PATH=f"{PG_BIN}:{os.environ['PATH']}")
    os.environ.pop("PGDATABASE", None)
    try:
        yield
    finally:
        as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(base, ignore_errors=True)
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def fresh_stack() -> None:
    """Every database and role gone, then postgres/init-databases.sh, as on the scale stack's first start."""
    for name in engine.databases():
        engine.sql(f'DROP DATABASE "{name}" WITH (FORCE)')
    for role in ("airflow", "mlflow", "inference_writer", "inference_reader"):
        engine.sql(f'DROP ROLE IF EXISTS "{role}"')
    env = {**os.environ, **PASSWORDS, "POSTGRES_USER": "postgres", "POSTGRES_DB": "postgres"}
    subprocess.run(["bash", str(ROOT / "postgres" / "init-databases.sh")], check=True, capture_output=True, env=env)


def fill(runs: int, logged: int) -> None:
    """Tables owned by the services' roles, as Airflow, MLflow and the model-server leave them."""
    for database, role in (("airflow", "airflow"), ("mlflow", "mlflow")):
        engine.sql(
            f"SET ROLE {role}; CREATE TABLE IF NOT EXISTS runs (id serial PRIMARY KEY, name text); "  # noqa: S608
            f"INSERT INTO runs (name) SELECT 'run-' || i FROM generate_series(1, {runs}) i",
            database,
        )
    engine.sql(
        "SET ROLE inference_writer; INSERT INTO inference_log SELECT now(), '1', jsonb_build_object('i', i) "  # noqa: S608
        f"FROM generate_series(1, {logged}) i",
        "inference_log",
    )


def counts() -> dict[str, int]:
    return {
        db: int(engine.sql(f"SELECT count(*) FROM {table}", db)[0])  # noqa: S608
        for db, table in (("airflow", "runs"), ("mlflow", "runs"), ("inference_log", "inference_log"))
    }


def volumes(root: Path) -> Path:
    (root / "training_data").mkdir(parents=True)
    (root / "training_data" / "iris.csv").write_text("sepal_length,label\n5.1,0\n")
    (root / "airflow_logs").mkdir()
    (root / "mlruns").mkdir()
    return root


def archive_of(root: Path) -> bytes:
    out = io.BytesIO()
    dump(out, root, KEY, "scale", engines={"postgres": engine.database_members, "bucket": lambda: iter(())})
    return out.getvalue()


def fresh_archive(tmp_path: Path, runs: int, logged: int) -> bytes:
    """A fresh stack with some rows, archived."""
    fresh_stack()
    fill(runs=runs, logged=logged)
    return archive_of(volumes(tmp_path / "source"))


def test_a_scale_archive_restores_every_database_with_its_owners_and_grants(cluster: None, tmp_path: Path) -> None:
    fresh_stack()
    assert engine.present(None) == []  # init-databases.sh's empty table is not state
    fill(runs=7, logged=40)
    made = archive_of(volumes(tmp_path / "source"))
    manifest = read(io.BytesIO(made))
    assert manifest["variant"] == "scale" and manifest["parts"]["postgres"]["entries"] == 3
    assert {"postgres/airflow.dump", "postgres/mlflow.dump", "postgres/inference_log.dump"} <= set(manifest["files"])

    fresh_stack()  # the empty machine
    target = tmp_path / "target"
    target.mkdir()
    restore(io.BytesIO(made), target, "scale", KEY)
    assert counts() == {"airflow": 7, "mlflow": 7, "inference_log": 40}
    assert engine.databases() == ["airflow", "inference_log", "mlflow"]  # nothing left aside
    assert engine.sql("SELECT tableowner FROM pg_tables WHERE tablename = 'runs'", "mlflow") == ["mlflow"]
    grants = engine.sql(
        "SELECT has_table_privilege('inference_writer', 'inference_log', 'INSERT'), "
        "has_table_privilege('inference_writer', 'inference_log', 'UPDATE'), "
        "has_table_privilege('inference_reader', 'inference_log', 'SELECT'), "
        "has_database_privilege('mlflow', 'airflow', 'CONNECT')",
        "inference_log",
    )
    assert grants == ["t|f|t|f"]  # the writer may add rows only; no role may open another's database
    assert (target / "training_data" / "iris.csv").read_text() == "sepal_length,label\n5.1,0\n"
    assert engine.present(None) == ["postgres/airflow", "postgres/inference_log", "postgres/mlflow"]
    with pytest.raises(BackupError, match=r"already has state \(training_data, postgres/airflow"):
        restore(io.BytesIO(made), target, "scale", KEY)


def test_a_dump_taken_while_rows_are_written_is_one_consistent_snapshot(cluster: None, tmp_path: Path) -> None:
    """Each transaction adds a run and its metric: in a snapshot of one moment, both tables have as many rows."""
    fresh_stack()
    fill(runs=3, logged=0)
    engine.sql("SET ROLE mlflow; CREATE TABLE metrics (run int); INSERT INTO metrics SELECT id FROM runs", "mlflow")
    writer = subprocess.Popen(  # until stopped: each transaction adds a run and its metric
        ["psql", "-X", "-q", "-d", "mlflow", "-c", "SET ROLE mlflow", "-c",
         "DO $$ BEGIN FOR i IN 1..100000000 LOOP INSERT INTO runs (name) VALUES ('more'); "
         "INSERT INTO metrics VALUES (i); COMMIT; END LOOP; END $$"],
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for("the writer's first rows", lambda: counts()["mlflow"] > 100, 60, interval=0.05)
        made = archive_of(volumes(tmp_path / "source"))
        at_dump = counts()["mlflow"]
        wait_for("rows written after the dump", lambda: counts()["mlflow"] > at_dump, 60, interval=0.05)
    finally:  # the loop runs in the server: stop its backend, then the client
        engine.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'mlflow'")
        writer.wait(timeout=60)
    written = counts()["mlflow"]
    fresh_stack()
    restore(io.BytesIO(made), tmp_path, "scale", KEY)
    runs, metrics = (int(engine.sql(f"SELECT count(*) FROM {t}", "mlflow")[0]) for t in ("runs", "metrics"))  # noqa: S608
    assert 100 < runs < written, "the dump did not overlap the writes"
    assert runs == metrics


@pytest.mark.parametrize("failing", ["pg_restore", "volume swap"])
def test_a_failure_half_way_leaves_every_database_and_volume_as_it_was(
    cluster: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    fresh_stack()
    fill(runs=2, logged=5)
    made = archive_of(volumes(tmp_path / "source"))
    fill(runs=10, logged=10)  # the state the restore would replace
    target = volumes(tmp_path / "target")
    (target / "training_data" / "iris.csv").write_text("newer\n")
    before, files = counts(), checksums(target)
    if failing == "pg_restore":  # the second database's restore fails, after the first one was replaced
        real_run, calls = engine.run, []

        def run(cmd: list[str], into: object = None) -> str:
            calls.append(cmd[0])
            if cmd[0] == "pg_restore" and calls.count("pg_restore") == 2:
                raise BackupError("pg_restore failed: out of disk")
            return real_run(cmd, into)  # type: ignore[arg-type]

        monkeypatch.setattr(engine, "run", run)
    else:  # every database replaced, then a volume's rename fails
        real_rename = Path.rename

        def rename(self: Path, to: Path) -> Path:
            if self.name == "iris.csv" and ".restore-staging" in str(self):
                raise OSError("disk full")
            return real_rename(self, to)

        monkeypatch.setattr(restore_module.Path, "rename", rename)
    with pytest.raises((BackupError, OSError), match="out of disk|disk full"):
        restore(io.BytesIO(made), target, "scale", KEY, force=True)
    monkeypatch.undo()
    assert counts() == before == {"airflow": 12, "mlflow": 12, "inference_log": 15}
    assert engine.databases() == ["airflow", "inference_log", "mlflow"]
    assert checksums(target) == files


def test_a_database_left_aside_by_an_interrupted_restore_is_named_and_nothing_changes(
    cluster: None, tmp_path: Path
) -> None:
    made = fresh_archive(tmp_path, runs=2, logged=1)
    engine.sql('ALTER DATABASE "mlflow" RENAME TO "mlflow_before_restore"')
    with pytest.raises(BackupError, match="mlflow_before_restore is left from an interrupted restore"):
        restore(io.BytesIO(made), volumes(tmp_path / "target"), "scale", KEY, force=True)
    assert engine.databases() == ["airflow", "inference_log", "mlflow_before_restore"]


def test_a_scale_archive_is_refused_by_the_default_stack_before_anything_is_written(
    cluster: None, tmp_path: Path
) -> None:
    made = fresh_archive(tmp_path, runs=1, logged=1)
    target = tmp_path / "default"
    target.mkdir()
    with pytest.raises(BackupError, match="postgres, which the default variant's stack does not have"):
        restore(io.BytesIO(made), target, "default", KEY)
    assert not any(target.rglob("*.dump"))
