"""The Grafana dashboard in docs/ uses only metrics Squall exports, so it cannot drift from the code."""

from __future__ import annotations

import json
import re
from pathlib import Path

from engine.metrics import metrics

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_the_dashboard_queries_only_exported_metrics() -> None:
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    queried = {name for panel in dashboard["panels"] for target in panel["targets"]
               for name in re.findall(r"\bsquall_[a-z_]+", target["expr"])}
    exported = {sample_name for family in metrics.registry.collect() for sample_name in
                (family.name, f"{family.name}_total", f"{family.name}_bucket", f"{family.name}_count",
                 f"{family.name}_sum")}
    assert queried and queried <= exported, sorted(queried - exported)
    documented = (DOCS / "observability.md").read_text()
    assert all(family.name.removesuffix("_total") in documented for family in metrics.registry.collect()
               if family.name.startswith("squall_")), "a metric is missing from docs/observability.md"


#: Gauges every serve and worker reads from the one database: each node exports the same number.
SHARED = ("squall_executions", "squall_queue_jobs", "squall_queue_oldest_job_age_seconds", "squall_outbox_pending",
          "squall_outbox_oldest_pending_age_seconds", "squall_inquiries_pending")


def test_the_dashboard_never_adds_up_what_every_node_reads_from_the_database() -> None:
    """Summed over a cluster's nodes, a count read from the shared database is counted once per node."""
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    shared = [e for e in expressions if any(re.search(rf"\b{name}\b", e) for name in SHARED)]
    assert len(shared) >= 5
    assert [e for e in shared if not re.match(r"(max|min)( by \([a-z_, ]+\))? ?\(", e)] == []
