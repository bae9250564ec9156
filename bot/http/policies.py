"""`/api/v1/policies` and `/api/v1/policytypes`: the loaded packs' action policies and the policy types
Squall enforces, in StackStorm's `PolicyAPI` and `PolicyTypeAPI` shapes (`st2 policy list|get`, `st2
policy-type list|get`).

A policy is its pack file here (`policies/*.yaml`), so it has no stored row: its `id` is 24 hex digits
derived from its ref, as an action's and a rule's, and the list is what `squall serve` enforces (the policy
executor's policies, `engine/policies.py`) plus the files that say `enabled: false`, shown disabled as
StackStorm shows them. A file that does not load (an unknown `policy_type`, bad parameters) is not listed: it
is enforced nowhere, and `squall pack reload` names its problem. Without these routes st2client turned the
404 of a list into "No matching items found" though a policy was loaded and enforced.

Policies are edited in their files, so `st2 policy update|delete` (`PUT`, `DELETE`) and a `POST` are a 405
naming the file: never a 404, which st2client takes for a delete done."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response

from bot.http.actions import ALLOW_GET, RELOADED, in_pack
from bot.http.paging import Paging
from bot.http.state import api_state
from engine.actions import content_id
from engine.packs import ContentDocument, Registry
from engine.policies import POLICY_TYPE_SPECS, POLICY_TYPES, Policy

router = APIRouter()



# -- policy types --------------------------------------------------------------------------------

def policy_type_public(ref: str) -> dict[str, Any]:
    """A policy type Squall enforces in StackStorm's `PolicyTypeAPI` shape (`resource_type.name` is its ref)."""
    resource_type, _dot, name = ref.partition(".")
    description, parameters = POLICY_TYPE_SPECS[ref]
    return {"id": content_id("policy_type", ref), "uid": f"policy_type:{resource_type}:{name}", "ref": ref,
            "name": name, "resource_type": resource_type, "description": description, "enabled": True,
            "module": "engine.policies", "parameters": parameters}


@router.get("/policytypes", tags=["policies"])
async def list_policy_types(response: Response, resource_type: str | None = None,
                            paging: Paging = Depends()) -> list[dict[str, Any]]:
    """StackStorm's filter: `resource_type` (`st2 policy-type list -r action`); sorted by it, then name."""
    refs = [ref for ref in sorted(POLICY_TYPES) if resource_type in (None, ref.partition(".")[0])]
    return [policy_type_public(ref) for ref in paging.page(refs, response)]


@router.get("/policytypes/{ref_or_id}", tags=["policies"])
async def get_policy_type(ref_or_id: str) -> dict[str, Any]:
    found = next((ref for ref in POLICY_TYPES if ref_or_id in (ref, content_id("policy_type", ref))), None)
    if found is None:
        raise HTTPException(404, f'Policy type "{ref_or_id}" is not one Squall enforces (no policy type has that ref '
                                 f"or id); the policy types are {', '.join(POLICY_TYPES)}.")
    return policy_type_public(found)


# -- policies ------------------------------------------------------------------------------------

def _disabled(document: ContentDocument) -> dict[str, Any] | None:
    """The fields of a policy file that says `enabled: false` and names its policy (the loader skips it)."""
    data = document.data
    if not isinstance(data, dict) or data.get("enabled", True) is not False:
        return None
    fields = {key: data.get(key) for key in ("name", "resource_ref", "policy_type")}
    if not all(isinstance(value, str) and value for value in fields.values()):
        return None
    parameters = data.get("parameters")
    return {**fields, "enabled": False, "parameters": parameters if isinstance(parameters, dict) else {}}


def _shown(document: ContentDocument, loaded: dict[str, Policy]) -> dict[str, Any] | None:
    """The policy `document` holds as the API shows it: the one enforced, or one its file disables; None for
    a file that does not load."""
    policy = loaded.get(document.file)
    if policy is not None:
        fields: dict[str, Any] | None = {
            "name": policy.name, "resource_ref": policy.resource_ref, "policy_type": policy.policy_type,
            "enabled": True, "parameters": policy.parameters}
    else:
        fields = _disabled(document)
    if fields is None:
        return None
    ref = f"{document.pack}.{fields['name']}"
    description = document.data.get("description")
    return {"id": content_id("policy", ref), "uid": f"policy:{document.pack}:{fields['name']}", "ref": ref,
            "pack": document.pack, "name": fields["name"], "description": str(description or ""),
            "enabled": fields["enabled"], "resource_ref": fields["resource_ref"],
            "policy_type": fields["policy_type"], "parameters": fields["parameters"],
            "metadata_file": document.file}


def _policies(request: Request) -> list[dict[str, Any]]:
    """Every policy of the loaded packs the API shows, sorted by pack and name as StackStorm sorts them."""
    squall = api_state(request).squall
    loaded = {policy.file: policy for found in squall.policies.policies.values() for policy in found}
    shown = (_shown(document, loaded) for document in _policy_files(request))
    return sorted((policy for policy in shown if policy is not None), key=lambda p: (p["pack"], p["name"]))


def _policy_files(request: Request) -> Iterator[ContentDocument]:
    return (d for d in api_state(request).squall.registry.documents if d.kind == "policies")


def _public(policy: dict[str, Any], registry: Registry) -> dict[str, Any]:
    """`policy` as StackStorm's API shows it: its `metadata_file` relative to its pack (`policies/limit.yaml`)
    as an action's is (`in_pack`); the refusals naming the file to edit keep the path Squall loaded it by."""
    return {**policy, "metadata_file": in_pack(policy["metadata_file"], policy["pack"], registry)}


@router.get("/policies", tags=["policies"])
async def list_policies(request: Request, response: Response, pack: str | None = None,
                        resource_ref: str | None = None, policy_type: str | None = None, name: str | None = None,
                        paging: Paging = Depends()) -> list[dict[str, Any]]:
    """StackStorm's filters (`st2 policy list -p PACK -r RESOURCE_REF -pt POLICY_TYPE`): `pack`, `resource_ref`
    (the action's ref), `policy_type`, and `name` (st2client's look-up by name)."""
    wanted = {"pack": pack, "resource_ref": resource_ref, "policy_type": policy_type, "name": name}
    chosen = [p for p in _policies(request) if all(v is None or p[k] == v for k, v in wanted.items())]
    registry = api_state(request).squall.registry
    return [_public(policy, registry) for policy in paging.page(chosen, response)]


def _find_policy(request: Request, ref_or_id: str) -> dict[str, Any]:
    """The policy `ref_or_id` names (its ref or its `id`); 404 naming the nearest refs."""
    policies = _policies(request)
    found = next((p for p in policies if ref_or_id in (p["ref"], p["id"])), None)
    if found is not None:
        return found
    near = difflib.get_close_matches(ref_or_id, [p["ref"] for p in policies], n=3)
    hint = f"; did you mean {', '.join(near)}?" if near else "; GET /api/v1/policies lists them."
    raise HTTPException(404, f'Policy "{ref_or_id}" is not loaded (no policy has that ref or id){hint}')


@router.get("/policies/{ref_or_id}", tags=["policies"])
async def get_policy(ref_or_id: str, request: Request) -> dict[str, Any]:
    return _public(_find_policy(request, ref_or_id), api_state(request).squall.registry)


@router.post("/policies", tags=["policies"])
async def create_policy() -> None:
    """StackStorm's policy create: refused (405), with where a policy is written instead."""
    raise HTTPException(405, "Policies are not created through the API in Squall: they are kept in pack files. "
                             "Write the policy (name, resource_ref, policy_type, parameters) as policies/<name>.yaml "
                             f"in a pack of your own; {RELOADED}.", headers=ALLOW_GET)


@router.put("/policies/{ref_or_id}", tags=["policies"])
async def update_policy(ref_or_id: str, request: Request) -> None:
    """StackStorm's policy update (`st2 policy update`): refused (405) with the policy's file to edit, or 404
    for a policy that is not loaded."""
    policy = _find_policy(request, ref_or_id)
    raise HTTPException(405, f"Policy {policy['ref']} cannot be changed through the API in Squall, where policies "
                             f"are kept in pack files: edit {policy['metadata_file']} instead (`enabled: false` "
                             f"there disables it); {RELOADED}.", headers=ALLOW_GET)


@router.delete("/policies/{ref_or_id}", tags=["policies"])
async def delete_policy(ref_or_id: str, request: Request) -> None:
    """StackStorm's policy delete (`st2 policy delete`): refused with a 405, never a 404 for a loaded policy
    (st2client takes a 404 for a delete done), naming the file to remove."""
    policy = _find_policy(request, ref_or_id)
    raise HTTPException(405, f"Policy {policy['ref']} cannot be deleted through the API in Squall, where policies "
                             f"are kept in pack files: remove {policy['metadata_file']} (or set `enabled: false` "
                             f"there); {RELOADED}.", headers=ALLOW_GET)
