"""`/api/v1/traces`: refused, saying where what a trace would show is kept in Squall.

Squall keeps no traces (StackStorm's trace service groups a trigger instance, the rules it fired and their
executions under one `trace_tag`). Each part keeps its own link instead: a trigger instance its `trace_tag`,
a rule enforcement its trigger instance and execution, an execution the trigger instance a rule ran it for
and the `trace_context` it was asked with. A plain 404 would not do: st2client turns a 404 on a list into
"No matching items found", so `st2 trace list` would say there is nothing to find. A read is a 501 (the
service is not implemented) and a write a 405, each with a faultstring st2 prints."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

router = APIRouter()
_INSTEAD = ("Squall keeps no traces: StackStorm's trace service is not there. What a trace groups is kept on its "
            "parts: `st2 trigger-instance list -a id trigger trace_tag occurrence_time` shows each trigger "
            "instance's trace tag (a webhook's St2-Trace-Tag header, or the one Squall made), `st2 rule-enforcement "
            "list --trigger-instance ID` the rules it fired and their executions, `st2 execution list "
            "--trigger_instance ID` what they ran, and `st2 execution get ID -j` an execution's context "
            "(`trace_context` holds the tag `st2 run --trace-tag` gave it).")


@router.get("/traces", tags=["traces"])
async def list_traces() -> None:
    """`st2 trace list [--trace-tag TAG]`: 501 with what to use instead."""
    raise HTTPException(501, _INSTEAD)


@router.get("/traces/{trace_id}", tags=["traces"])
async def get_trace(trace_id: str) -> None:
    """`st2 trace get ID`: 501 with what to use instead (st2client prints its own "not found" for any failed get)."""
    raise HTTPException(501, _INSTEAD)


@router.api_route("/traces", methods=["POST", "PUT", "DELETE"], tags=["traces"], include_in_schema=False)
async def write_traces() -> None:
    raise HTTPException(405, _INSTEAD, headers={"Allow": "GET"})


@router.api_route("/traces/{trace_id}", methods=["POST", "PUT", "DELETE"], tags=["traces"], include_in_schema=False)
async def write_trace(trace_id: str) -> None:
    raise HTTPException(405, _INSTEAD, headers={"Allow": "GET"})
