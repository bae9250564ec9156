"""`/api/v1/traces`: refused (`refusals.unserved`), saying where what a trace would show is kept in Squall.

Squall keeps no traces (StackStorm's trace service groups a trigger instance, the rules it fired and their
executions under one `trace_tag`). Each part keeps its own link instead: a trigger instance its `trace_tag`,
a rule enforcement its trigger instance and execution, an execution the trigger instance a rule ran it for
and the `trace_context` it was asked with. `st2 trace list [--trace-tag TAG]` gets the 501 and prints it;
`st2 trace get ID` prints its own "not found" for any failed get."""

from __future__ import annotations

from fastapi import APIRouter

from bot.http.refusals import unserved

router = APIRouter()
_INSTEAD = ("Squall keeps no traces: StackStorm's trace service is not there. What a trace groups is kept on its "
            "parts: `st2 trigger-instance list -a id trigger trace_tag occurrence_time` shows each trigger "
            "instance's trace tag (a webhook's St2-Trace-Tag header, or the one Squall made), `st2 rule-enforcement "
            "list --trigger-instance ID` the rules it fired and their executions, `st2 execution list "
            "--trigger_instance ID` what they ran, and `st2 execution get ID -j` an execution's context "
            "(`trace_context` holds the tag `st2 run --trace-tag` gave it).")
unserved(router, ("/traces", "/traces/{trace_id}"), _INSTEAD, "traces")
