"""`squall rule | trigger | trigger-instance | rule-enforcement`: the rules engine from the shell (spec §5, §6).

`squall trigger-instance purge` is StackStorm's `st2-purge-trigger-instances` (`engine/retention.py`).

`squall rule test` is StackStorm's `st2-rule-tester`: it evaluates one rule file against one
trigger instance file, explains every criterion and runs no action (exit 0 match, 1 none).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from bot.cli.common import (
    MAX_LISTED,
    JsonOption,
    audit_entry,
    audit_made,
    check_depth,
    current_config,
    fail,
    group,
    json_value,
    out,
    print_json,
    setup_errors,
    shown_time,
    too_deep,
    with_app,
)
from bot.cli.executions import BEFORE_HELP, purge_cutoff, purge_history

if TYPE_CHECKING:
    from collections.abc import Callable

    import requests

    from bot.app import Squall
    from bot.cli.client import ServiceApi
    from engine.rules import Check

rule_app = group("Rules: list, show, test against a trigger instance.")
trigger_app = group("Trigger types: list, emit an instance.")
instance_app = group("Stored trigger instances: list, show, re-emit, purge.")
enforcement_app = group("Rule enforcements: which rule fired for which instance.")


def _read_document(path: Path, what: str) -> Any:
    """The file as YAML (JSON is YAML), nested no deeper than a JSON option may be (`check_depth`): a
    document a thousand levels deep was a RecursionError traceback from the YAML parser."""
    import yaml

    try:
        text = path.read_text()
    except OSError as exc:
        raise fail(f"cannot read {what} file {path}: {exc.strerror or exc}") from exc
    try:
        document = yaml.safe_load(text)  # JSON is YAML
    except RecursionError:
        raise too_deep(f"{what} file {path}", None) from None
    except yaml.YAMLError as exc:
        raise fail(f"{what} file {path} is not valid JSON or YAML: {exc}") from exc
    check_depth(document, f"{what} file {path}")
    return document


# -- rule ----------------------------------------------------------------------------------------

@rule_app.command("list")
def rule_list(pack: Annotated[str | None, typer.Option("--pack", help="Only this pack.")] = None,
              as_json: JsonOption = False) -> None:
    """Rules loaded from the packs (errors go to standard error)."""

    async def work(squall: Squall) -> tuple[list[dict[str, Any]], list[str]]:
        rules = [r.public() for r in squall.rules.rules.values() if pack is None or r.pack == pack]
        return rules, [str(e) for e in squall.rules.errors]

    rules, errors = with_app(work)  # its own problems said once below, not every pack's
    if as_json:
        print_json(rules)
    else:
        if not rules:
            _none("rules loaded" + (f" from pack {pack}" if pack else "") + " (a rule is <pack>/rules/NAME.yaml)")
        for rule in rules:
            state = "enabled" if rule["enabled"] else "disabled"
            out.print(f"{rule['ref']}  [{state}]  {rule['trigger']['type']} -> {rule['action']['ref']}"
                      + (f"  {rule['description']}" if rule["description"] else ""), markup=False)
    for error in errors:
        typer.echo(f"rule skipped: {error}", err=True)


@rule_app.command("get")
def rule_get(ref: Annotated[str, typer.Argument(help="Rule ref (pack.name).")], as_json: JsonOption = False) -> None:
    """One rule; exit 2 if there is no such rule."""

    async def work(squall: Squall) -> dict[str, Any] | None:
        rule = squall.rules.rules.get(ref)
        return rule.public() if rule else None

    rule = with_app(work, pack_problems=True)  # a rule that did not load is said
    if rule is None:
        raise fail(f'rule "{ref}" not found')
    if as_json:
        print_json(rule)
    else:
        import yaml

        out.print(yaml.safe_dump(rule, sort_keys=False, default_flow_style=False).rstrip(), markup=False)


def _shown(value: Any) -> str:
    return json.dumps(value, default=str)


def _masked(value: Any, revealed: list[str]) -> Any:
    """`value` with what `decrypt_kv` revealed while the criteria were evaluated masked (docs/security.md:
    decrypted datastore values are masked everywhere): a pattern rendered from a secret, and a payload value
    that holds it (the token that matches). A secret too short to replace inside other text (`MIN_REPLACED`)
    masks the whole value it appears in, as the letters around the mask would tell it."""
    texts = [text for text in revealed if text]
    if not texts:
        return value
    from engine.executions import scrub, scrubbable
    from engine.parameters import MASK, MIN_REPLACED

    whole = value if isinstance(value, str) else json.dumps(value, default=str)
    if any(len(text) < MIN_REPLACED and text in whole for text in texts):
        return MASK
    return scrub(value, scrubbable(texts))


def _criterion(check: Check, revealed: list[str]) -> dict[str, Any]:
    """One criterion as `rule test` prints it, what `decrypt_kv` revealed masked (`_masked`)."""
    return {"key": check.key, "operator": check.operator, "pattern": _masked(check.pattern, revealed),
            "value": _masked(check.value, revealed), "result": check.result,
            **({"error": _masked(check.error, revealed)} if check.error else {})}


@rule_app.command("test")
def rule_test(
    rule_file: Annotated[Path, typer.Option("--rule", help="Rule file (YAML).")],
    instance_file: Annotated[Path, typer.Option("--trigger-instance", help="Trigger instance file (JSON or YAML) "
                                                "with `trigger` and `payload`.")],
    as_json: JsonOption = False,
) -> None:
    """Evaluate a rule against a trigger instance, explaining each criterion (runs no action)."""
    from engine.rules import MatchFailure, RuleError, failure_reason, load_rule

    data = _read_document(rule_file, "rule")
    instance = _read_document(instance_file, "trigger instance")
    if not isinstance(instance, dict) or not isinstance(instance.get("trigger"), str) or "payload" not in instance:
        raise fail(f"trigger instance file {instance_file} needs `trigger` (a trigger type ref) and `payload`")

    async def work(squall: Squall) -> dict[str, Any]:
        try:
            rule = load_rule(data, "default", str(rule_file), squall.registry, check_action=False)
        except RuleError as exc:
            raise fail(str(exc)) from exc
        checks: list[Check] = []
        outcome: dict[str, Any] = {"rule": rule.ref, "trigger": instance["trigger"], "matched": False,
                                   "criteria": [], "error": None}
        if rule.trigger_type != instance["trigger"]:
            outcome["error"] = (f'the rule is for trigger type "{rule.trigger_type}", the instance is of '
                                f'"{instance["trigger"]}"')
            return outcome
        revealed: list[str] = []

        def evaluate() -> bool:  # inside the database call, where it runs: what decrypt_kv reveals is noted
            with squall.executions.revealing(revealed):
                return squall.rules.evaluator.matches(rule, instance["payload"], checks)

        try:
            outcome["matched"] = await squall.db(evaluate)
        except MatchFailure as failure:
            outcome["error"] = _masked(failure_reason(rule, str(instance.get("id", "<file>")), failure), revealed)
        outcome["criteria"] = [_criterion(check, revealed) for check in checks]
        if rule.criteria and not instance["payload"]:
            outcome["error"] = "the payload is empty: a rule with criteria does not match it"
        return outcome

    outcome = with_app(work, pack_problems=True)
    if as_json:
        print_json(outcome)
    else:
        for check in outcome["criteria"]:
            mark = "PASS" if check["result"] else "FAIL"
            out.print(f"{mark}  {check['key']}  {check['operator']}  pattern={_shown(check['pattern'])}  "
                      f"value={_shown(check['value'])}" + (f"  error: {check['error']}" if "error" in check else ""),
                      markup=False)
        if outcome["error"]:
            out.print(outcome["error"], markup=False)
        out.print(f'=== RULE {"MATCHES" if outcome["matched"] else "DOES NOT MATCH"} ===', markup=False)
    raise typer.Exit(0 if outcome["matched"] else 1)


# -- trigger -------------------------------------------------------------------------------------

@trigger_app.command("list")
def trigger_list(pack: Annotated[str | None, typer.Option("--pack", help="Only this pack.")] = None,
                 as_json: JsonOption = False) -> None:
    """Trigger types from the packs."""

    async def work(squall: Squall) -> list[dict[str, Any]]:
        return [{"ref": t.ref, "name": t.name, "pack": t.pack, "description": t.description,
                 "parameters_schema": t.parameters_schema, "payload_schema": t.payload_schema}
                for t in sorted(squall.registry.trigger_types.values(), key=lambda t: t.ref)
                if pack is None or t.pack == pack]

    types = with_app(work, pack_problems=True)
    if as_json:
        print_json(types)
    else:
        for item in types:
            out.print(f"{item['ref']}  {item['description']}".rstrip(), markup=False)


def _payload(text: str) -> Any:
    """`--payload` decoded, nested no deeper than the HTTP API takes a body (`json_value`)."""
    try:
        return json_value(text, "--payload")
    except ValueError as exc:
        raise fail(f"--payload is not valid JSON: {exc}") from exc


@trigger_app.command("emit")
def trigger_emit(
    trigger_type: Annotated[str, typer.Argument(help="Trigger type ref, e.g. core.st2.webhook.")],
    payload: Annotated[str, typer.Option("--payload", "-p", help="Payload as JSON.")] = "{}",
    trace_tag: Annotated[str | None, typer.Option("--trace-tag", help="Trace tag.")] = None,
    url: Annotated[str | None, typer.Option("--url", help="For core.st2.webhook: the hook URL.")] = None,
) -> None:
    """Dispatch a trigger instance, wait for the rules and the executions they start, print it.

    When `squall serve` is up, the instance goes through its API, so its rules, sensors and chat
    adapters see it; otherwise it is dispatched here, stored with its `cli.trigger.emit` event in one
    transaction (`TriggerService.dispatch`'s `audit`): an event the database does not take fires nothing."""
    from bot.cli.client import running_service
    from engine.triggers import WEBHOOK, TriggerError

    body = _payload(payload)

    async def work(squall: Squall) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        audit = await squall.db(audit_entry, squall.store, "cli.trigger.emit", _emitted(url, trace_tag))
        try:
            if url is not None:
                squall.triggers.check(trigger_type, body)
                instance = await squall.triggers.dispatch(WEBHOOK, body, parameters=_hook(squall, url),
                                                          trace_tag=trace_tag, validate=False, audit=audit)
            else:
                instance = await squall.triggers.dispatch(trigger_type, body, trace_tag=trace_tag, audit=audit)
        except (TriggerError, LookupError) as exc:
            raise fail(str(exc)) from exc
        await squall.rules.settle()
        return (await squall.triggers.get(instance["id"]),
                await squall.rules.enforcements(trigger_instance_id=instance["id"]))

    config = current_config()
    with setup_errors(config), running_service(config) as service:  # its temporary key is in the database
        if service is not None:
            instance, enforcements = _emit_through(service, trigger_type, body, trace_tag, url)
        else:
            instance, enforcements = with_app(work, pack_problems=True)  # its rules are pack content
    print_json(instance)
    for item in enforcements:
        typer.echo(f"rule {item['rule']['ref']}: {item['status']}"
                   + (f" (execution {item['execution_id']})" if item["execution_id"] else "")
                   + (f": {item['failure_reason']}" if item["failure_reason"] else ""), err=True)


#: How long `trigger emit` waits for the instance and its rules' executions (`RulesEngine.settle`'s too).
EMIT_WAIT_SECONDS = 60.0


def _emit_through(service: ServiceApi, trigger_type: str, body: Any, trace_tag: str | None,
                  url: str | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """`trigger emit` against the running service: its webhook routes, then its records, once the
    instance is processed and the executions its rules started have ended (as `RulesEngine.settle`
    waits for them without a service, and within the same 60 s)."""
    import time

    import requests

    from bot.cli.client import INSTANCE_HEADER

    headers = {"St2-Trace-Tag": trace_tag} if trace_tag else {}
    try:
        if url is not None:
            if trigger_type != "core.st2.webhook":
                raise fail(f"--url is for core.st2.webhook, not {trigger_type}")
            answer = service.request("POST", f"/webhooks/{url.strip('/')}", json=body, headers=headers)
        else:
            answer = service.request("POST", "/webhooks/st2", json={"trigger": trigger_type, "payload": body},
                                     headers=headers)
        if answer.status_code != 202:
            raise fail(_fault(answer))
        instance_id = answer.headers[INSTANCE_HEADER]
        # The service stored the instance (its webhook routes take no event): the event follows, and one that
        # cannot be stored is said whole, with the instance that was fired.
        audit_made("cli.trigger.emit", trigger_type, _emitted(url, trace_tag, instance_id),
                   f"trigger instance {instance_id} was fired through the running service")
        deadline = time.monotonic() + EMIT_WAIT_SECONDS
        instance = _polled(service, f"/triggerinstances/{instance_id}", deadline,
                           lambda found: found.get("status") in ("processed", "processing_failed"))
        enforcements = service.request("GET", "/ruleenforcements",
                                       params={"trigger_instance": instance_id}).json()
        _wait_for_executions(service, enforcements, deadline)
    except requests.RequestException as exc:
        raise fail(f"the running service at {service.base} did not answer: {exc}") from exc
    return instance, enforcements


def _polled(service: ServiceApi, path: str, deadline: float, done: Callable[[dict[str, Any]], bool],
            every: float = 0.05) -> dict[str, Any]:
    """The service's record at `path` once `done` holds for it, or as it is at `deadline`; asked again
    `every` seconds."""
    import time

    while True:
        found = service.request("GET", path).json()
        if done(found) or time.monotonic() > deadline:
            return found
        time.sleep(every)


def _wait_for_executions(service: ServiceApi, enforcements: list[dict[str, Any]], deadline: float) -> None:
    """Wait until the execution of each enforcement has ended; one still running at `deadline` is named on
    stderr, with how to follow it."""
    from engine.executions import COMPLETED

    for item in enforcements:
        execution_id = item.get("execution_id")
        if not execution_id:
            continue
        record = _polled(service, f"/executions/{execution_id}", deadline,
                         lambda found: found.get("status") in COMPLETED, every=0.2)
        if record.get("status") not in COMPLETED:
            typer.echo(f"execution {execution_id} is still {record.get('status')} after {EMIT_WAIT_SECONDS:.0f} s "
                       f"(see: squall execution get {execution_id})", err=True)


def _emitted(url: str | None, trace_tag: str | None, instance_id: str | None = None) -> dict[str, Any]:
    """`cli.trigger.emit`'s detail: the instance stored (its payload is there, not in the audit log), its id
    given here or added as the instance is stored with its event (`TriggerService.dispatch`'s `audit`)."""
    return {**({"instance": instance_id} if instance_id is not None else {}),
            **({"url": url} if url is not None else {}), **({"trace_tag": trace_tag} if trace_tag else {})}


def _hook(squall: Squall, url: str) -> dict[str, str]:
    """`--url`'s trigger parameters, as `RulesEngine.dispatch_webhook` gives an instance of the hook: only its
    rules see it. LookupError for a hook no rule has."""
    hook = url.strip("/")
    if not squall.rules.webhook_rules(hook):
        raise LookupError(f"Webhook {hook} not registered with st2")
    return {"url": hook}


def _fault(answer: requests.Response) -> str:
    try:
        return str(answer.json().get("faultstring") or answer.text)
    except ValueError:
        return f"HTTP {answer.status_code}: {answer.text[:200]}"


# -- trigger-instance ----------------------------------------------------------------------------

def _none(what: str) -> None:
    """An empty listing says so on standard error (standard output stays empty for scripts)."""
    typer.echo(f"no {what}", err=True)


def _show_instances(items: list[dict[str, Any]]) -> None:
    if not items:
        _none("trigger instances stored yet")
    for item in items:
        out.print(f"{item['id']}  {item['occurrence_time']}  {item['trigger']}  {item['status']}", markup=False)


@instance_app.command("list")
def instance_list(trigger: Annotated[str | None, typer.Option("--trigger", help="Only this trigger type.")] = None,
                  limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=MAX_LISTED,
                                                     help="At most this many.")] = 50,
                  as_json: JsonOption = False) -> None:
    """Stored trigger instances, newest first."""

    async def work(squall: Squall) -> list[dict[str, Any]]:
        return await squall.triggers.list(trigger=trigger, limit=limit)

    items = with_app(work)
    print_json(items) if as_json else _show_instances(items)


@instance_app.command("get")
def instance_get(instance_id: Annotated[str, typer.Argument(help="Trigger instance id.")],
                 as_json: JsonOption = False) -> None:
    """One trigger instance with its rule enforcements; exit 2 if it does not exist."""

    async def work(squall: Squall) -> dict[str, Any]:
        try:
            instance = await squall.triggers.get(instance_id)
        except LookupError as exc:
            raise fail(str(exc).strip("'\"")) from exc
        return {**instance, "enforcements": await squall.rules.enforcements(trigger_instance_id=instance_id)}

    item = with_app(work)
    if as_json:
        print_json(item)
    else:
        import yaml

        out.print(yaml.safe_dump(item, sort_keys=False, default_flow_style=False).rstrip(), markup=False)


@instance_app.command("re-emit")
def instance_re_emit(instance_id: Annotated[str, typer.Argument(help="Trigger instance id.")],
                     as_json: JsonOption = False) -> None:
    """Dispatch a new instance with the same trigger and payload; wait for processing; print it."""
    async def work(squall: Squall) -> dict[str, Any]:
        audit = await squall.db(audit_entry, squall.store, "cli.trigger.re_emit", {"instance": instance_id})
        try:  # stored with its event, one transaction (`TriggerService.dispatch`'s `audit`)
            instance = await squall.triggers.re_emit(instance_id, audit)
        except LookupError as exc:
            raise fail(str(exc).strip("'\"")) from exc
        await squall.rules.settle()
        return await squall.triggers.get(instance["id"])

    item = with_app(work, pack_problems=True)
    if as_json:
        print_json(item)
    else:
        out.print(f"re-emitted as {item['id']} ({item['status']})", markup=False)


@instance_app.command("purge")
def instance_purge(
    before: Annotated[str, typer.Option("--before", help=BEFORE_HELP)],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Delete without asking.")] = False,
) -> None:
    """Delete trigger instances processed (or failed) that occurred before a time, with their rule
    enforcements (StackStorm's st2-purge-trigger-instances); pending and processing ones stay."""
    from engine.retention import count_trigger_instances, purge_trigger_instances
    from engine.storage import iso

    cutoff = purge_cutoff(before)

    def what(found: int) -> str:
        return (f"{found:,} processed trigger instance{'s' if found != 1 else ''} that occurred before "
                f"{shown_time(iso(cutoff))} UTC, with their rule enforcements")

    purge_history(
        "cli.trigger_instance.purge", cutoff, noun="trigger instances", what=what, yes=yes,
        count=lambda store: count_trigger_instances(store, cutoff),
        purge=lambda store, progress, closing: purge_trigger_instances(store, cutoff, progress=progress,
                                                                       closing=closing), detail={})


# -- rule-enforcement ----------------------------------------------------------------------------

@enforcement_app.command("list")
def enforcement_list(rule: Annotated[str | None, typer.Option("--rule", help="Only this rule ref.")] = None,
                     trigger_instance: Annotated[str | None, typer.Option("--trigger-instance",
                                                                          help="Only this instance.")] = None,
                     limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=MAX_LISTED,
                                                        help="At most this many.")] = 50,
                     as_json: JsonOption = False) -> None:
    """Rule enforcements, newest first."""

    async def work(squall: Squall) -> list[dict[str, Any]]:
        return await squall.rules.enforcements(rule=rule, trigger_instance_id=trigger_instance, limit=limit)

    items = with_app(work)
    if as_json:
        print_json(items)
        return
    if not items:
        _none("rule enforcements recorded yet")
    for item in items:
        out.print(f"{item['id']}  {item['enforced_at']}  {item['rule']['ref']}  {item['status']}  "
                  f"instance {item['trigger_instance_id']}"
                  + (f"  execution {item['execution_id']}" if item["execution_id"] else "")
                  + (f"  {item['failure_reason']}" if item["failure_reason"] else ""), markup=False)
