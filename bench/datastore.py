"""Datastore get/set per second on SQLite, plain and encrypted, against raw SQLAlchemy.

    .venv/bin/python bench/datastore.py [--n N]

Baseline, measured in the same run on the same database file: one SQLAlchemy Core INSERT (or
SELECT by primary key) per operation, each in its own transaction, as `Datastore` does.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.crypto import KeyRing
from engine.datastore import Datastore
from engine.storage import Store


def rate(n: int, work) -> float:
    start = time.perf_counter()
    for i in range(n):
        work(i)
    return n / (time.perf_counter() - start)


def main(n: int) -> None:
    home = Path(tempfile.mkdtemp(prefix="squall-bench-kv-"))
    store = Store.open(f"sqlite:///{home / 'kv.db'}")
    datastore = Datastore(store, KeyRing(home / "datastore.key"))
    raw = sa.Table("raw_kv", sa.MetaData(), sa.Column("name", sa.String, primary_key=True),
                   sa.Column("value", sa.Text))
    raw.create(store.engine)
    insert = raw.insert()
    select = sa.select(raw.c.value).where(raw.c.name == sa.bindparam("n"))

    def raw_set(i: int) -> None:
        with store.engine.begin() as conn:
            conn.execute(insert, {"name": f"k{i}", "value": "v"})

    def raw_get(i: int) -> None:
        with store.engine.connect() as conn:
            conn.execute(select, {"n": f"k{i}"}).scalar()

    rows = [
        ("baseline: raw SQLAlchemy insert", rate(n, raw_set)),
        ("baseline: raw SQLAlchemy select", rate(n, raw_get)),
        ("datastore set (plain)", rate(n, lambda i: datastore.set(f"p{i}", "value"))),
        ("datastore get (plain)", rate(n, lambda i: datastore.get(f"p{i}"))),
        ("datastore set (encrypted)", rate(n, lambda i: datastore.set(f"e{i}", "value", encrypt=True))),
        ("datastore get (encrypted, decrypt)", rate(n, lambda i: datastore.get(f"e{i}", decrypt=True))),
    ]
    baseline = {"set": rows[0][1], "get": rows[1][1]}
    print(f"{'what':38} {'ops/s':>10} {'vs raw':>8}")
    for name, ops in rows:
        kind = "set" if ("set" in name or "insert" in name) else "get"
        print(f"{name:38} {ops:10,.0f} {ops / baseline[kind]:7.2f}x")
    store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=3000)
    main(parser.parse_args().n)
