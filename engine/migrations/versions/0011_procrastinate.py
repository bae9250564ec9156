"""procrastinate's schema (jobs, workers, their functions and triggers), for `executor.kind: procrastinate`.

Only on PostgreSQL (the scale-out executor needs it; SQLite keeps the local executor). The schema of
procrastinate 3.10 is vendored beside the migrations (`procrastinate/schema-3.10.0.sql`), so this
revision runs the same SQL whatever procrastinate is installed later; a procrastinate upgrade whose
release ships migrations becomes a new revision that runs them. The script is not idempotent, so it
runs only where `procrastinate_jobs` does not exist yet; every `%` is doubled because psycopg reads
the text as a query with parameters.

Revision ID: 0011
Revises: 0010
"""

from pathlib import Path

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

SCHEMA = Path(__file__).resolve().parent.parent / "procrastinate" / "schema-3.10.0.sql"


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    if bind.exec_driver_sql("SELECT to_regclass('procrastinate_jobs')").scalar() is None:
        bind.exec_driver_sql(SCHEMA.read_text(encoding="utf-8").replace("%", "%%"))


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    bind.exec_driver_sql(
        "DROP TABLE IF EXISTS procrastinate_events, procrastinate_periodic_defers, procrastinate_jobs, "
        "procrastinate_workers CASCADE")
    functions = bind.exec_driver_sql(
        "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = current_schema() AND p.proname LIKE 'procrastinate%%'").scalars().all()
    for function in functions:
        bind.exec_driver_sql(f"DROP FUNCTION IF EXISTS {function} CASCADE")
    bind.exec_driver_sql("DROP TYPE IF EXISTS procrastinate_job_to_defer_v1, procrastinate_job_event_type, "
                         "procrastinate_job_status CASCADE")
