"""Tests for pack loading (spec §1.1, §1.2, §9): StackStorm-layout packs, per-file errors with
file and line, the registrar's action checks, pack configs and the Registry lookups."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.actions import build_action
from engine.config import SYSTEM_PACKS_PATH
from engine.content_files import set_enabled
from engine.packs import (
    ContentWarning,
    Registry,
    SystemPacksMissing,
    UnknownAction,
    discover,
    load_registry,
    load_registry_cached,
)
from engine.yamlfile import ContentError, ContentInvalid, LineMap, load_yaml
from tests.conftest import write


def manifest(root: Path, folder: str, *, name: str | None = None, ref: str | None = None) -> Path:
    """A minimal but complete pack.yaml (StackStorm requires name, description, version, author)."""
    lines = [f"name: {name or folder}"]
    if ref is not None:
        lines.insert(0, f"ref: {ref}")
    lines += ["description: A test pack", "version: 0.1.0", "author: Tester", "email: t@example.com"]
    return write(root / folder / "pack.yaml", "\n".join(lines) + "\n")


def noop_action(root: Path, pack: str, name: str, file: str | None = None, extra: str = "") -> Path:
    return write(root / pack / "actions" / f"{file or name}.yaml", f"name: {name}\nrunner_type: noop\n{extra}")


def load(tmp_path: Path, *paths: Path) -> Registry:
    """Load the system packs plus `paths` (default: tmp_path/packs) with configs in tmp_path/configs."""
    return load_registry(list(paths) or [tmp_path / "packs"], tmp_path / "configs", SYSTEM_PACKS_PATH)


def errors_for(registry: Registry, fragment: str) -> list[ContentError]:
    return [e for e in registry.errors if fragment in e.file]


def only_error(registry: Registry) -> ContentError:
    assert len(registry.errors) == 1, [str(e) for e in registry.errors]
    return registry.errors[0]


def build(doc: dict, pack_path: Path, pack: str = "demo") -> object:
    return build_action(doc, LineMap(None), pack=pack, pack_path=pack_path, file="meta.yaml")


# ---------------------------------------------------------------------------------------------
# A complete StackStorm-layout pack
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def demo_pack(tmp_path: Path) -> Path:
    packs = tmp_path / "packs"
    manifest(packs, "demo")
    write(packs / "demo" / "actions" / "restart.yaml", """
        ---
        name: restart
        runner_type: local-shell-script
        description: Restart a service.
        entry_point: scripts/restart.sh
        enabled: true
        parameters:
          service:
            type: string
            required: true
            position: 0
          mode:
            type: string
            enum: [soft, hard]
            default: soft
            position: 1
          force:
            type: boolean
            default: false
          sudo:
            default: true
            immutable: true
          timeout:
            default: 30
            description: Restarting can be slow.
        notify:
          on-complete:
            routes: [chat]
        tags:
          - name: area
            value: ops
    """)
    write(packs / "demo" / "actions" / "scripts" / "restart.sh", "#!/bin/sh\necho restarting \"$@\"\n")
    write(packs / "demo" / "actions" / "hello.yml", """
        name: hello
        runner_type: python-script
        entry_point: hello.py
        parameters:
          who:
            type: string
            default: "{{ config_context.greeting }}"
    """)
    write(packs / "demo" / "actions" / "hello.py", """
        from st2common.runners.base_action import Action

        class Hello(Action):
            def run(self, who):
                return who
    """)
    write(packs / "demo" / "actions" / "ping.yaml", """
        name: ping
        runner_type: http-request
        parameters:
          url:
            default: https://example.com/ping
    """)
    write(packs / "demo" / "config.schema.yaml", """
        greeting:
          type: string
          default: hello
        region:
          type: string
          required: true
        retries:
          type: integer
          default: 3
        api:
          type: object
          properties:
            port:
              type: integer
              default: 8080
            host:
              type: string
              default: localhost
    """)
    write(tmp_path / "configs" / "demo.yaml", """
        region: eu-west-1
        retries: 5
        api:
          host: api.example.com
    """)
    write(packs / "demo" / "triggers" / "deployed.yaml", """
        name: deployed
        description: A deployment finished.
        payload_schema:
          type: object
          properties:
            service: {type: string}
    """)
    write(packs / "demo" / "aliases" / "restart.yaml", """
        name: restart
        action_ref: demo.restart
        formats: ["restart {{service}}"]
    """)
    write(packs / "demo" / "rules" / "on_deploy.yaml", """
        name: on_deploy
        trigger: {type: demo.deployed}
        action: {ref: demo.restart}
    """)
    return packs / "demo"


def test_stackstorm_layout_pack_loads_everything(tmp_path: Path, demo_pack: Path) -> None:
    registry = load(tmp_path)
    assert registry.errors == []
    pack = registry.packs["demo"]
    assert pack.path == demo_pack
    assert pack.system is False
    assert pack.version == "0.1.0"
    assert {"demo.restart", "demo.hello", "demo.ping"} <= set(registry.actions)

    restart = registry.action("demo.restart")
    assert restart.runner_type == "local-shell-script"
    assert restart.entry_path == demo_pack / "actions" / "scripts" / "restart.sh"
    assert restart.notify == {"on-complete": {"routes": ["chat"]}}
    assert restart.tags == [{"name": "area", "value": "ops"}]
    params = restart.parameters
    # action parameters
    assert params["service"] == {"type": "string", "required": True, "position": 0}
    assert params["mode"]["enum"] == ["soft", "hard"]
    # runner parameters merged in, overridden where the action says so
    assert params["sudo"] == {"type": "boolean", "default": True, "immutable": True,
                              "description": "Run the command with sudo."}
    assert params["timeout"]["default"] == 30
    assert params["timeout"]["type"] == "integer"
    assert params["timeout"]["description"] == "Restarting can be slow."
    assert params["kwarg_op"]["default"] == "--"
    assert params["debug"]["default"] is False
    assert restart.runner_parameter_names >= {"sudo", "timeout", "cwd", "env", "debug"}
    assert "service" not in restart.runner_parameter_names
    assert restart.secret_names == {"sudo_password"}
    # the action's own declaration is kept apart from the merge
    assert set(restart.declared) == {"service", "mode", "force", "sudo", "timeout"}

    ping = registry.action("demo.ping")
    assert ping.parameters["url"] == {"type": "string", "required": True, "default": "https://example.com/ping",
                                      "description": "URL to send the request to."}
    assert registry.action("demo.hello").entry_path == demo_pack / "actions" / "hello.py"

    trigger = registry.trigger_types["demo.deployed"]
    assert trigger.payload_schema["properties"] == {"service": {"type": "string"}}
    kinds = sorted((d.kind, d.data["name"]) for d in registry.documents if d.pack == "demo")
    assert kinds == [("aliases", "restart"), ("rules", "on_deploy")]
    assert registry.counts("demo") == {"actions": 3, "triggers": 1, "aliases": 1, "rules": 1,
                                       "sensors": 0, "policies": 0}
    assert pack.summary(registry.counts("demo"))["content"]["actions"] == 3


def test_pack_config_schema_defaults_are_applied(tmp_path: Path, demo_pack: Path) -> None:
    registry = load(tmp_path)
    assert registry.errors == []
    assert registry.packs["demo"].config == {
        "greeting": "hello",               # default
        "region": "eu-west-1",             # from configs/demo.yaml
        "retries": 5,                      # configured value wins over the default
        "api": {"host": "api.example.com", "port": 8080},  # nested default next to a set value
    }


def test_pack_config_missing_required_key_is_reported(tmp_path: Path, demo_pack: Path) -> None:
    write(tmp_path / "configs" / "demo.yaml", "retries: 1\n")
    registry = load(tmp_path)
    error = only_error(registry)
    assert error.file.endswith("configs/demo.yaml")
    assert "demo" in error.reason and "'region' is a required property" in error.reason
    # the pack and its actions still load, with the defaults that exist
    assert "demo.restart" in registry.actions
    assert registry.packs["demo"].config["greeting"] == "hello"


def test_pack_config_without_config_file_says_the_file_is_missing(tmp_path: Path, demo_pack: Path) -> None:
    """An operator's first config left `packs.configs_path` at its default while the pack's config was where
    StackStorm keeps it (/opt/stackstorm/configs): Squall warned "pack content skipped: configs/demo.yaml:
    config of pack 'demo': (top level): 'region' is a required property", of a file that does not exist,
    for a pack of which nothing was skipped. StackStorm registers a pack without its config file, and its
    actions get the schema's defaults (spec §9.2), so Squall does too; the warning says that, where the file
    was looked for, which setting names the folder, and which required items are left without a value."""
    (tmp_path / "configs" / "demo.yaml").unlink()
    registry = load(tmp_path)
    warning = only_error(registry)
    assert isinstance(warning, ContentWarning)  # said as "pack content", not "pack content skipped"
    assert warning.file.endswith("configs/demo.yaml") and warning.line is None
    assert warning.reason.startswith("no config file for pack 'demo'"), warning.reason
    assert "packs.configs_path" in warning.reason and "/opt/stackstorm/configs" in warning.reason
    assert "schema's defaults" in warning.reason and "region" in warning.reason
    assert "is a required property" not in warning.reason and "(top level)" not in warning.reason
    # nothing was skipped: the pack and its actions load, and the config is the schema's defaults
    assert "demo.restart" in registry.actions
    assert registry.packs["demo"].config == {"greeting": "hello", "retries": 3,
                                             "api": {"host": "localhost", "port": 8080}}


def test_pack_config_without_config_file_needing_nothing_is_no_problem(tmp_path: Path) -> None:
    """A schema whose every required item has a default needs no config file: nothing is said."""
    packs = tmp_path / "packs"
    manifest(packs, "demo")
    write(packs / "demo" / "config.schema.yaml", "region: {type: string, required: true, default: eu}\n")
    registry = load(tmp_path)
    assert registry.errors == []
    assert registry.packs["demo"].config == {"region": "eu"}


def test_pack_config_without_config_file_names_every_required_item_once(tmp_path: Path) -> None:
    """One warning per missing file, naming each required item without a default (nested ones too)."""
    packs = tmp_path / "packs"
    manifest(packs, "demo")
    write(packs / "demo" / "config.schema.yaml", """
        api_url: {type: string, required: true}
        token: {type: string, required: true, secret: true}
        region: {type: string, default: us-east-1}
    """)
    warning = only_error(load(tmp_path))
    assert isinstance(warning, ContentWarning)
    assert "api_url, token" in warning.reason and "region" not in warning.reason, warning.reason


def test_pack_config_value_of_wrong_type_is_reported_not_raised(tmp_path: Path, demo_pack: Path) -> None:
    write(tmp_path / "configs" / "demo.yaml", "region: x\nretries: many\napi: not-a-mapping\n")
    registry = load(tmp_path)
    reasons = sorted(e.reason for e in errors_for(registry, "configs/demo.yaml"))
    assert len(reasons) == 2, reasons
    assert "retries" in reasons[1] and "'many' is not of type 'integer'" in reasons[1]
    assert "api" in reasons[0] and "is not of type 'object'" in reasons[0]
    assert "demo.restart" in registry.actions


def test_pack_config_nested_required_is_enforced(tmp_path: Path) -> None:
    packs = tmp_path / "packs"
    manifest(packs, "demo")
    write(packs / "demo" / "config.schema.yaml", """
        api:
          type: object
          required: true
          properties:
            token: {type: string, required: true, secret: true}
            port: {type: integer, default: 443}
    """)
    write(tmp_path / "configs" / "demo.yaml", "api:\n  port: 8443\n")
    registry = load(tmp_path)
    error = only_error(registry)
    assert "api" in error.reason and "'token' is a required property" in error.reason
    assert registry.packs["demo"].config == {"api": {"port": 8443}}


def test_a_secret_config_value_that_does_not_fit_is_not_quoted(tmp_path: Path) -> None:
    """Load problems are shown to every viewer of /packs and logged: a secret's value is masked in
    them, wherever it sits (itself, inside a section, in a list), and other values are still quoted."""
    packs = tmp_path / "packs"
    manifest(packs, "demo")
    write(packs / "demo" / "config.schema.yaml", """
        api_token: {type: string, secret: true, minLength: 32}
        pin: {type: string, secret: true}
        db:
          type: object
          properties:
            password: {type: string, secret: true}
        keys: {type: array, items: {type: string, secret: true}}
        retries: {type: integer}
    """)
    write(tmp_path / "configs" / "demo.yaml", "api_token: tok-LEAKED-8f3a\npin: 90210777\n"
                                             "db: pw-LEAKED-77\nkeys: [k-LEAKED-1, 42]\nretries: many\n")
    registry = load(tmp_path)
    reasons = sorted(e.reason for e in errors_for(registry, "configs/demo.yaml"))
    assert len(reasons) == 5, reasons
    assert not [r for r in reasons if "LEAKED" in r or "90210777" in r or "42" in r]
    assert "api_token: ******** is too short" in reasons[0]
    assert "db: ******** is not of type 'object'" in reasons[1]
    assert "keys.1: ******** is not of type 'string'" in reasons[2]
    assert "pin: ******** is not of type 'string'" in reasons[3]
    assert "retries: 'many' is not of type 'integer'" in reasons[4]


def test_a_secret_under_pattern_properties_or_a_positional_item_is_not_quoted(tmp_path: Path) -> None:
    """A multi-account config (vsphere's `patternProperties`) and a positional `items` list: the walk that
    decides what not to quote follows them as `masked_config` does (it quoted these three)."""
    packs = tmp_path / "packs"
    manifest(packs, "demo")
    write(packs / "demo" / "config.schema.yaml", """
        vsphere:
          type: object
          patternProperties:
            "^[a-z]+$":
              type: object
              properties:
                passwd: {type: string, secret: true}
        pair: {type: array, items: [{type: string}, {type: string, secret: true}]}
        accounts:
          type: object
          additionalProperties: {type: object, properties: {api_token: {type: string, pattern: "^xoxb-", secret: true}}}
        shape: {type: object, patternProperties: {"^a": {type: string, secret: true}}}
    """)
    write(tmp_path / "configs" / "demo.yaml", "vsphere: {default: {passwd: 20240611123}}\npair: [name, 987654321]\n"
                                             "accounts: {prod: {api_token: xoxp-LEAKED}}\nshape: [alpha-LEAKED]\n")
    registry = load(tmp_path)
    reasons = sorted(e.reason for e in errors_for(registry, "configs/demo.yaml"))
    assert len(reasons) == 4, [str(e) for e in registry.errors]
    assert not [r for r in reasons if "LEAKED" in r or "20240611123" in r or "987654321" in r], reasons
    assert "accounts.prod.api_token: ******** does not match" in reasons[0]
    assert "pair.1: ******** is not of type 'string'" in reasons[1]
    assert "shape: ******** is not of type 'object'" in reasons[2]
    assert "vsphere.default.passwd: ******** is not of type 'string'" in reasons[3]


def test_pack_config_required_inside_list_items_is_enforced(tmp_path: Path) -> None:
    packs = tmp_path / "packs"
    manifest(packs, "demo")
    write(packs / "demo" / "config.schema.yaml", """
        servers:
          type: array
          items:
            type: object
            properties:
              host: {type: string, required: true}
              port: {type: integer, default: 22}
    """)
    write(tmp_path / "configs" / "demo.yaml", "servers:\n  - host: a\n  - port: 2222\n")
    error = only_error(load(tmp_path))
    assert "servers.1" in error.reason and "'host' is a required property" in error.reason


def test_pack_config_empty_object_section_gets_nested_defaults(tmp_path: Path) -> None:
    packs = tmp_path / "packs"
    manifest(packs, "demo")
    write(packs / "demo" / "config.schema.yaml", """
        api:
          type: object
          properties:
            port: {type: integer, default: 443}
    """)
    write(tmp_path / "configs" / "demo.yaml", "api:\n")
    registry = load(tmp_path)
    assert registry.errors == []
    assert registry.packs["demo"].config == {"api": {"port": 443}}


def test_pack_config_leaves_an_optional_object_it_does_not_hold_out(tmp_path: Path) -> None:
    """The github pack's schema has an optional `repository_sensor` object with required keys and
    defaults inside: a config without it was reported ("'repositories' is a required property") and
    `squall pack reload` exited 1. As StackStorm, an object the config leaves out is not checked; one
    it holds is checked whole."""
    packs = tmp_path / "packs"
    manifest(packs, "demo")
    write(packs / "demo" / "config.schema.yaml", """
        token: {type: string, required: true, secret: true}
        repository_sensor:
          type: object
          required: false
          properties:
            event_type_whitelist: {type: array, default: [IssuesEvent]}
            repositories: {type: array, required: true}
    """)
    write(tmp_path / "configs" / "demo.yaml", "token: abc\n")
    registry = load(tmp_path)
    assert registry.errors == []
    # what actions get: the object filled in from its nested defaults, as StackStorm's loader does
    assert registry.packs["demo"].config == {"token": "abc", "repository_sensor": {
        "event_type_whitelist": ["IssuesEvent"]}}
    write(tmp_path / "configs" / "demo.yaml", "token: abc\nrepository_sensor: {event_type_whitelist: []}\n")
    error = only_error(load(tmp_path))
    assert "'repositories' is a required property" in error.reason


def test_a_packs_content_hash_leaves_out_what_only_serve_reads(tmp_path: Path) -> None:
    """Workers refuse a request made with another hash of the pack. The web UI's rule switch (and `st2
    rule disable`) rewrites a rule file on the serve node it reaches, which broke every action of the
    pack on the workers; rules, aliases and sensors run on serve nodes only."""
    packs = tmp_path / "packs"
    manifest(packs, "demo")
    write(packs / "demo" / "actions" / "hello.yaml", "name: hello\nrunner_type: noop\n")
    write(packs / "demo" / "rules" / "r.yaml", "enabled: true\n")

    def content_hash() -> str:
        return load(tmp_path).packs["demo"].content_hash()

    before = content_hash()
    write(packs / "demo" / "rules" / "r.yaml", "enabled: false\n")
    write(packs / "demo" / "aliases" / "a.yaml", "name: a\n")
    write(packs / "demo" / "sensors" / "s.yaml", "class_name: S\n")
    assert content_hash() == before
    write(packs / "demo" / "actions" / "hello.yaml", "name: hello\nrunner_type: noop\ndescription: x\n")
    assert content_hash() != before


def test_an_actions_enabled_switch_leaves_its_packs_content_hash_as_it_was(tmp_path: Path) -> None:
    """`st2 action disable` rewrites the action's `enabled:` line on the serve node it reaches; that
    changed the pack's hash there, so the workers refused every execution of the pack requested from
    that node. Any other change to the action's metadata still changes it."""
    packs = tmp_path / "packs"
    manifest(packs, "demo")
    hello = packs / "demo" / "actions" / "hello.yaml"
    write(hello, "name: hello\nrunner_type: noop")  # no final line end: set_enabled adds one with its line

    def content_hash() -> str:
        return load(tmp_path).packs["demo"].content_hash()

    before = content_hash()
    assert set_enabled(hello, False, default=True)
    assert hello.read_text() == "name: hello\nrunner_type: noop\nenabled: false\n"
    assert content_hash() == before
    assert set_enabled(hello, True, default=True)
    assert content_hash() == before
    write(hello, "enabled: false  # off for the freeze\nname: hello\nrunner_type: noop\n")
    assert content_hash() == before
    write(hello, "name: hello\nrunner_type: noop\ndescription: x\n")
    assert content_hash() != before
    write(hello, "name: hello\nrunner_type: noop")
    write(packs / "demo" / "actions" / "workflows" / "flow.yaml", "enabled: true\n")
    changed = content_hash()
    write(packs / "demo" / "actions" / "workflows" / "flow.yaml", "enabled: false\n")
    assert content_hash() != changed  # only an action's own metadata file is read without it


def test_pack_config_that_is_not_a_mapping_is_reported(tmp_path: Path) -> None:
    packs = tmp_path / "packs"
    manifest(packs, "demo")
    write(tmp_path / "configs" / "demo.yaml", "- a\n- b\n")
    registry = load(tmp_path)
    error = only_error(registry)
    assert error.file.endswith("configs/demo.yaml")
    assert "mapping" in error.reason
    assert registry.packs["demo"].config == {}


def test_pack_config_with_broken_yaml_names_the_line(tmp_path: Path) -> None:
    packs = tmp_path / "packs"
    manifest(packs, "demo")
    write(tmp_path / "configs" / "demo.yaml", "a: 1\nb: [1, 2\nc: 3\n")
    registry = load(tmp_path)
    error = only_error(registry)
    assert error.file.endswith("configs/demo.yaml")
    assert error.line == 3
    assert "invalid YAML" in error.reason


# ---------------------------------------------------------------------------------------------
# Broken files: reported with file and line, everything else keeps loading
# ---------------------------------------------------------------------------------------------


def test_broken_yaml_is_reported_with_file_and_line_and_the_rest_loads(tmp_path: Path) -> None:
    packs = tmp_path / "packs"
    manifest(packs, "demo")
    manifest(packs, "other")
    noop_action(packs, "demo", "good")
    write(packs / "demo" / "actions" / "broken.yaml", """
        name: broken
        runner_type: local-shell-cmd
        parameters:
          cmd:
            default: ls
           sudo: true
        description: the line above is mis-indented
    """)
    noop_action(packs, "demo", "zlast")
    noop_action(packs, "other", "thing")
    registry = load(tmp_path)
    error = only_error(registry)
    assert error.file.endswith("demo/actions/broken.yaml")
    assert error.line == 6
    assert "invalid YAML" in error.reason
    assert str(error).startswith(f"{error.file}:6: ")
    assert {"demo.good", "demo.zlast", "other.thing"} <= set(registry.actions)
    assert "demo.broken" not in registry.actions


def test_unclosed_quote_points_at_the_line_where_the_string_starts(tmp_path: Path) -> None:
    file = write(tmp_path / "a.yaml", "name: a\ndescription: 'never closed\nrunner_type: noop\n")
    with pytest.raises(ContentInvalid) as caught:
        load_yaml(file, "a.yaml")
    assert caught.value.error.file == "a.yaml"
    assert caught.value.error.line == 2


def test_unquoted_jinja_in_yaml_is_reported_on_its_line(tmp_path: Path) -> None:
    file = write(tmp_path / "a.yaml", "name: a\nparameters:\n  x:\n    default: {{ y }}\n")
    with pytest.raises(ContentInvalid) as caught:
        load_yaml(file)
    assert caught.value.error.line == 4
    assert caught.value.error.file == str(file)


def test_line_map_finds_nested_keys_and_list_items(tmp_path: Path) -> None:
    file = write(tmp_path / "a.yaml", """
        name: a
        parameters:
          first:
            type: string
          second:
            type: integer
            position: 0
        tags:
          - name: x
          - name: y
    """)
    data, lines = load_yaml(file)
    assert data["parameters"]["second"]["position"] == 0
    assert lines.line("name") == 1
    assert lines.line("parameters", "second") == 5
    assert lines.line("parameters", "second", "position") == 7
    assert lines.line("tags", 1) == 10
    # an unknown key falls back to the nearest known ancestor
    assert lines.line("parameters", "first", "missing") == 3
    assert LineMap(None).line("anything") is None


def test_empty_and_unreadable_files(tmp_path: Path) -> None:
    empty = write(tmp_path / "empty.yaml", "")
    data, lines = load_yaml(empty)
    assert data is None and lines.line("x") is None
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(ContentInvalid) as caught:
        load_yaml(binary, "bin.yaml")
    assert caught.value.error.line is None
    assert "cannot read file" in caught.value.error.reason
    assert str(caught.value.error).startswith("bin.yaml: ")


def test_action_that_is_not_a_mapping_is_an_error(tmp_path: Path) -> None:
    packs = tmp_path / "packs"
    manifest(packs, "demo")
    write(packs / "demo" / "actions" / "list.yaml", "- name: x\n")
    write(packs / "demo" / "actions" / "empty.yaml", "")
    registry = load(tmp_path)
    assert len(registry.errors) == 2
    assert all("mapping" in e.reason for e in registry.errors)


def test_unknown_runner_type_names_the_nearest_runner(tmp_path: Path) -> None:
    packs = tmp_path / "packs"
    manifest(packs, "demo")
    write(packs / "demo" / "actions" / "a.yaml", "name: a\ndescription: x\nrunner_type: local-shell-cdm\n")
    error = only_error(load(tmp_path))
    assert error.line == 3
    assert "'local-shell-cdm'" in error.reason
    assert "did you mean 'local-shell-cmd'?" in error.reason
    assert "python-script" in error.reason  # the available runners are listed


def test_missing_runner_type_and_name_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ContentInvalid, match="unknown runner_type None"):
        build({"name": "a"}, tmp_path)
    with pytest.raises(ContentInvalid, match="'name' is required"):
        build({"runner_type": "noop"}, tmp_path)
    with pytest.raises(ContentInvalid, match="may hold only"):
        build({"name": "a b", "runner_type": "noop"}, tmp_path)


def test_orchestra_is_an_alias_of_orquesta(tmp_path: Path) -> None:
    # StackStorm's old spelling names the same runner, with the same requirements
    with pytest.raises(ContentInvalid, match="runner 'orquesta' needs 'entry_point'"):
        build({"name": "a", "runner_type": "orchestra"}, tmp_path)


def test_unknown_action_attribute_suggests_the_nearest(tmp_path: Path) -> None:
    with pytest.raises(ContentInvalid) as caught:
        build({"name": "a", "runner_type": "noop", "entrypoint": "x.sh"}, tmp_path)
    assert "unknown action attribute 'entrypoint'" in str(caught.value)
    assert "did you mean 'entry_point'?" in str(caught.value)


def test_unknown_parameter_attribute_suggests_required_with_its_line(tmp_path: Path) -> None:
    packs = tmp_path / "packs"
    manifest(packs, "demo")
    write(packs / "demo" / "actions" / "a.yaml", """
        name: a
        runner_type: noop
        parameters:
          host:
            type: string
            requried: true
    """)
    noop_action(packs, "demo", "b")
    registry = load(tmp_path)
    error = only_error(registry)
    assert error.file.endswith("demo/actions/a.yaml")
    assert error.line == 6
    assert "parameter 'host': unknown attribute 'requried' (did you mean 'required'?)" in error.reason
    assert "demo.b" in registry.actions


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "str"}, "unknown type 'str' (did you mean 'string'?)"),
        ({"type": ["string", "int"]}, "unknown type 'int'"),
        ({"required": "yes"}, "'required' must be true or false"),
        ({"secret": 1}, "'secret' must be true or false"),
        ({"enum": "a,b"}, "'enum' must be a list"),
        ({"position": -1}, "'position' must be a number >= 0"),
        ({"position": "0"}, "'position' must be a number >= 0"),
    ],
)
def test_invalid_parameter_schema_is_rejected(tmp_path: Path, spec: dict, message: str) -> None:
    with pytest.raises(ContentInvalid) as caught:
        build({"name": "a", "runner_type": "noop", "parameters": {"p": spec}}, tmp_path)
    assert message in str(caught.value)


def test_parameter_names_must_be_words(tmp_path: Path) -> None:
    with pytest.raises(ContentInvalid, match="parameter name 'my-param'"):
        build({"name": "a", "runner_type": "noop", "parameters": {"my-param": {"type": "string"}}}, tmp_path)
    with pytest.raises(ContentInvalid, match="must be a mapping"):
        build({"name": "a", "runner_type": "noop", "parameters": {"p": "string"}}, tmp_path)
    with pytest.raises(ContentInvalid, match="'parameters' must be a mapping"):
        build({"name": "a", "runner_type": "noop", "parameters": ["p"]}, tmp_path)


def test_positions_must_be_contiguous(tmp_path: Path) -> None:
    packs = tmp_path / "packs"
    manifest(packs, "demo")
    write(packs / "demo" / "actions" / "a.yaml", """
        name: a
        runner_type: noop
        parameters:
          one: {type: string, position: 0}
          three: {type: string, position: 2}
    """)
    error = only_error(load(tmp_path))
    assert "contiguous" in error.reason
    assert "three" in error.reason
    assert error.line == 5


def test_positions_must_be_unique_and_may_start_above_zero(tmp_path: Path) -> None:
    with pytest.raises(ContentInvalid, match="contiguous"):
        build({"name": "a", "runner_type": "noop",
               "parameters": {"x": {"position": 0}, "y": {"position": 0}}}, tmp_path)
    # StackStorm's registrar wants them contiguous, not from 0 (git's clone numbers from 1)
    action = build({"name": "a", "runner_type": "noop",
                    "parameters": {"x": {"position": 1}, "y": {"position": 2}}}, tmp_path)
    assert action.parameters["y"]["position"] == 2
    action = build({"name": "a", "runner_type": "noop",
                    "parameters": {"x": {"position": 1}, "y": {"position": 0}, "z": {}}}, tmp_path)
    assert action.parameters["x"]["position"] == 1


def test_overriding_a_runner_parameter_type_fails_with_stackstorm_message(tmp_path: Path) -> None:
    packs = tmp_path / "packs"
    manifest(packs, "demo")
    write(packs / "demo" / "actions" / "a.yaml", """
        name: a
        runner_type: local-shell-cmd
        parameters:
          timeout:
            type: string
            default: "30"
    """)
    error = only_error(load(tmp_path))
    assert error.reason == ('The attribute "type" for the runner parameter "timeout" in action "demo.a" '
                            "cannot be overridden.")
    assert error.line == 5


@pytest.mark.parametrize("attribute", [{"position": 0}, {"secret": True}, {"minimum": 1}])
def test_other_runner_parameter_attributes_cannot_be_overridden(tmp_path: Path, attribute: dict) -> None:
    key = next(iter(attribute))
    with pytest.raises(ContentInvalid) as caught:
        build({"name": "a", "runner_type": "local-shell-cmd", "parameters": {"timeout": attribute}}, tmp_path)
    assert str(caught.value).endswith(
        f'The attribute "{key}" for the runner parameter "timeout" in action "demo.a" cannot be overridden.'
    )


def test_overridable_runner_parameter_attributes(tmp_path: Path) -> None:
    action = build({"name": "a", "runner_type": "local-shell-cmd", "parameters": {
        "timeout": {"type": "integer", "default": 5, "description": "short", "enum": [5, 10],
                    "required": True, "immutable": True},
        "cwd": {"default": "/tmp"},
    }}, tmp_path)
    assert action.parameters["timeout"] == {"type": "integer", "default": 5, "description": "short",
                                           "enum": [5, 10], "required": True, "immutable": True,
                                           "minimum": 0}  # the runner's, not overridden
    assert action.parameters["cwd"] == {"type": "string", "default": "/tmp",
                                       "description": "Working directory where the command runs."}


def test_immutable_without_default_fails(tmp_path: Path) -> None:
    with pytest.raises(ContentInvalid, match="'x' is immutable and so needs a 'default'"):
        build({"name": "a", "runner_type": "noop", "parameters": {"x": {"type": "string", "immutable": True}}},
              tmp_path)
    # a runner parameter without a runner default needs one from the action
    with pytest.raises(ContentInvalid, match="'cwd' is immutable and so needs a 'default'"):
        build({"name": "a", "runner_type": "local-shell-cmd", "parameters": {"cwd": {"immutable": True}}},
              tmp_path)
    # the runner's default is enough, and so is a null default
    action = build({"name": "a", "runner_type": "local-shell-cmd", "parameters": {
        "timeout": {"immutable": True}, "x": {"type": "string", "immutable": True, "default": None}}}, tmp_path)
    assert action.parameters["timeout"] == {"type": "integer", "default": 60, "immutable": True, "minimum": 0,
                                           "description": "Seconds before the command is killed."}


def test_entry_point_must_exist(tmp_path: Path) -> None:
    packs = tmp_path / "packs"
    manifest(packs, "demo")
    write(packs / "demo" / "actions" / "a.yaml", """
        name: a
        runner_type: local-shell-script
        entry_point: scripts/missing.sh
    """)
    error = only_error(load(tmp_path))
    assert "entry_point 'scripts/missing.sh' does not exist" in error.reason
    assert error.line == 3


def test_entry_point_is_required_for_script_runners(tmp_path: Path) -> None:
    for runner in ("local-shell-script", "python-script"):
        with pytest.raises(ContentInvalid, match=f"runner '{runner}' needs 'entry_point'"):
            build({"name": "a", "runner_type": runner}, tmp_path)


def test_entry_point_outside_the_pack_is_rejected(tmp_path: Path) -> None:
    pack = tmp_path / "packs" / "demo"
    write(tmp_path / "outside.sh", "echo hi\n")
    write(tmp_path / "packs" / "demo-evil" / "x.sh", "echo hi\n")
    for entry in ("../../../outside.sh", str(tmp_path / "outside.sh"), "../../demo-evil/x.sh"):
        with pytest.raises(ContentInvalid, match="points outside the pack"):
            build({"name": "a", "runner_type": "local-shell-script", "entry_point": entry}, pack)


def test_entry_point_absolute_inside_the_pack_is_allowed(tmp_path: Path) -> None:
    pack = tmp_path / "packs" / "demo"
    script = write(pack / "actions" / "run.sh", "echo hi\n")
    action = build({"name": "a", "runner_type": "local-shell-script", "entry_point": str(script)}, pack)
    assert action.entry_path == script
    # a path that climbs out and back in stays inside
    action = build({"name": "b", "runner_type": "local-shell-script", "entry_point": "../actions/run.sh"}, pack)
    assert action.entry_path is not None and action.entry_path.resolve() == script


def test_local_shell_cmd_ignores_an_entry_point(tmp_path: Path) -> None:
    pack = tmp_path / "packs" / "demo"
    write(pack / "actions" / "run.sh", "echo hi\n")
    # StackStorm stores and ignores it: the runner runs `cmd`
    assert build({"name": "a", "runner_type": "local-shell-cmd", "entry_point": "run.sh"}, pack).entry_path is None
    # an empty entry_point (as core's actions have) is fine
    assert build({"name": "a", "runner_type": "local-shell-cmd", "entry_point": ""}, pack).entry_path is None


def test_action_pack_attribute_must_match_the_folder(tmp_path: Path) -> None:
    with pytest.raises(ContentInvalid, match="does not match the pack folder's pack 'demo'"):
        build({"name": "a", "runner_type": "noop", "pack": "other"}, tmp_path)
    assert build({"name": "a", "runner_type": "noop", "pack": "demo"}, tmp_path).ref == "demo.a"


def test_notify_and_enabled_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ContentInvalid, match="unknown notify section 'on-sucess' \\(did you mean 'on-success'"):
        build({"name": "a", "runner_type": "noop", "notify": {"on-sucess": {}}}, tmp_path)
    with pytest.raises(ContentInvalid, match="'enabled' must be true or false"):
        build({"name": "a", "runner_type": "noop", "enabled": "no"}, tmp_path)
    with pytest.raises(ContentInvalid, match="'output_schema' must be"):
        build({"name": "a", "runner_type": "noop", "output_schema": "x"}, tmp_path)


def test_duplicate_action_name_in_one_pack(tmp_path: Path) -> None:
    packs = tmp_path / "packs"
    manifest(packs, "demo")
    noop_action(packs, "demo", "same", file="a", extra="description: first\n")
    write(packs / "demo" / "actions" / "b.yaml", "description: second\nname: same\nrunner_type: noop\n")
    registry = load(tmp_path)
    error = only_error(registry)
    assert error.file.endswith("demo/actions/b.yaml")
    assert error.line == 2
    assert "action 'demo.same' is already defined in" in error.reason and "a.yaml" in error.reason
    assert registry.actions["demo.same"].description == "first"


def test_same_action_name_in_two_packs_is_fine(tmp_path: Path) -> None:
    packs = tmp_path / "packs"
    manifest(packs, "one")
    manifest(packs, "two")
    noop_action(packs, "one", "same")
    noop_action(packs, "two", "same")
    registry = load(tmp_path)
    assert registry.errors == []
    assert {"one.same", "two.same"} <= set(registry.actions)


# ---------------------------------------------------------------------------------------------
# Pack manifests and discovery
# ---------------------------------------------------------------------------------------------


def test_duplicate_pack_ref_in_two_paths_first_wins(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    manifest(first, "demo")
    noop_action(first, "demo", "one")
    manifest(second, "demo_copy", name="demo-copy", ref="demo")
    noop_action(second, "demo_copy", "two")
    registry = load(tmp_path, first, second)
    error = only_error(registry)
    assert error.file.endswith("second/demo_copy/pack.yaml")
    assert error.line == 1  # the `ref:` line that makes it a duplicate
    assert "pack 'demo' is already loaded from" in error.reason and str(first / "demo") in error.reason
    assert registry.packs["demo"].path == first / "demo"
    assert "demo.one" in registry.actions
    assert "demo.two" not in registry.actions


def test_same_folder_listed_twice_is_loaded_once(tmp_path: Path) -> None:
    packs = tmp_path / "packs"
    manifest(packs, "demo")
    registry = load(tmp_path, packs, packs, packs / "demo", tmp_path / "missing")
    assert registry.errors == []
    assert discover([packs, packs / "demo"]) == [packs / "demo"]


def test_discover_only_takes_folders_with_pack_yaml(tmp_path: Path) -> None:
    packs = tmp_path / "packs"
    manifest(packs, "b")
    manifest(packs, "a")
    (packs / "notapack").mkdir()
    write(packs / "README.md", "hi\n")
    assert discover([packs, tmp_path / "nope"]) == [packs / "a", packs / "b"]


@pytest.mark.parametrize(
    ("name", "ref", "line"),
    [("my-pack", None, 1), ("My Pack", "My-Pack", 1), ("ok", "has-dash", 1), ("Demo", None, 1)],
)
def test_invalid_pack_ref_is_rejected(tmp_path: Path, name: str, ref: str | None, line: int) -> None:
    packs = tmp_path / "packs"
    manifest(packs, "demo", name=name, ref=ref)
    noop_action(packs, "demo", "a")
    registry = load(tmp_path)
    error = only_error(registry)
    assert error.file.endswith("demo/pack.yaml")
    assert error.line == line
    assert "^[a-z0-9_]+$" in error.reason
    assert not any(a.startswith(("demo.", "my")) for a in registry.actions)


def test_name_with_dashes_is_fine_when_ref_is_valid(tmp_path: Path) -> None:
    packs = tmp_path / "packs"
    manifest(packs, "demo", name="my-pack", ref="my_pack")
    noop_action(packs, "demo", "a")
    registry = load(tmp_path)
    assert registry.errors == []
    assert registry.packs["my_pack"].summary()["name"] == "my-pack"
    assert "my_pack.a" in registry.actions


def test_broken_pack_manifest_is_reported_and_other_packs_load(tmp_path: Path) -> None:
    packs = tmp_path / "packs"
    write(packs / "bad" / "pack.yaml", "name: bad\ndescription: [oops\n")
    write(packs / "list" / "pack.yaml", "- name\n")
    manifest(packs, "good")
    noop_action(packs, "good", "a")
    registry = load(tmp_path)
    assert len(registry.errors) == 2
    assert {Path(e.file).parent.name for e in registry.errors} == {"bad", "list"}
    assert "good.a" in registry.actions and "bad" not in registry.packs


@pytest.mark.parametrize("reserved", ["core", "chatops", "squall"])  # what Squall depends on; `linux` may be replaced
def test_user_pack_with_a_system_name_is_rejected(tmp_path: Path, reserved: str) -> None:
    packs = tmp_path / "packs"
    manifest(packs, reserved)
    noop_action(packs, reserved, "mine")
    registry = load(tmp_path)
    error = only_error(registry)
    assert error.file.endswith(f"{reserved}/pack.yaml")
    assert f"'{reserved}' is reserved" in error.reason
    assert f"{reserved}.mine" not in registry.actions
    assert "core.local" in registry.actions  # the real core is untouched
    assert registry.packs["core"].path == SYSTEM_PACKS_PATH / "core"


def test_trigger_type_without_name_is_reported(tmp_path: Path) -> None:
    packs = tmp_path / "packs"
    manifest(packs, "demo")
    write(packs / "demo" / "triggers" / "bad.yaml", "description: no name\n")
    write(packs / "demo" / "triggers" / "good.yaml", "name: good\n")
    registry = load(tmp_path)
    error = only_error(registry)
    assert error.file.endswith("triggers/bad.yaml") and "name" in error.reason
    assert registry.trigger_types["demo.good"].payload_schema == {}


def test_broken_alias_file_is_reported_and_others_kept(tmp_path: Path) -> None:
    packs = tmp_path / "packs"
    manifest(packs, "demo")
    write(packs / "demo" / "aliases" / "a.yaml", "name: a\nformats:\n  - 'x\n")
    write(packs / "demo" / "aliases" / "b.yaml", "name: b\n")
    registry = load(tmp_path)
    error = only_error(registry)
    assert error.file.endswith("aliases/a.yaml") and error.line == 3
    assert [d.data["name"] for d in registry.documents if d.pack == "demo"] == ["b"]
    assert registry.documents[-1].lines.line("name") == 1


# ---------------------------------------------------------------------------------------------
# Registry lookups
# ---------------------------------------------------------------------------------------------


def test_registry_unknown_action_suggests_nearest_refs(tmp_path: Path, demo_pack: Path) -> None:
    registry = load(tmp_path)
    with pytest.raises(UnknownAction) as caught:
        registry.action("demo.restrat")
    assert caught.value.ref == "demo.restrat"
    assert caught.value.suggestions[0] == "demo.restart"
    assert 'action "demo.restrat" not found; did you mean demo.restart' in str(caught.value)

    with pytest.raises(UnknownAction) as caught:
        registry.action("core.loacl")
    assert "core.local" in caught.value.suggestions

    # right name, wrong pack: the same name in other packs is suggested
    with pytest.raises(UnknownAction) as caught:
        registry.action("ops.restart")
    assert "demo.restart" in caught.value.suggestions

    with pytest.raises(UnknownAction) as caught:
        registry.action("zzzzzzzzzzzz")
    assert caught.value.suggestions == []
    assert str(caught.value) == 'action "zzzzzzzzzzzz" not found'
    assert isinstance(caught.value, LookupError)


def test_disabled_action_raises_with_stackstorm_message(tmp_path: Path) -> None:
    packs = tmp_path / "packs"
    manifest(packs, "demo")
    noop_action(packs, "demo", "disabled", extra="enabled: false\n")
    registry = load(tmp_path)
    assert registry.errors == []
    assert registry.actions["demo.disabled"].enabled is False
    with pytest.raises(UnknownAction) as caught:
        registry.action("demo.disabled")
    assert str(caught.value) == 'Unable to execute. Action "demo.disabled" is disabled.'


# ---------------------------------------------------------------------------------------------
# The shipped core pack
# ---------------------------------------------------------------------------------------------


CORE_TRIGGERS = {
    "core.st2.IntervalTimer", "core.st2.DateTimer", "core.st2.CronTimer", "core.st2.webhook",
    "core.st2.generic.actiontrigger", "core.st2.generic.notifytrigger", "core.st2.generic.inquiry",
    "core.st2.action.file_written", "core.st2.sensor.process_spawn", "core.st2.sensor.process_exit",
    "core.st2.key_value_pair.create", "core.st2.key_value_pair.update", "core.st2.key_value_pair.delete",
    "core.st2.key_value_pair.value_change",
}


def test_core_pack_loads_cleanly_with_its_actions_and_triggers(tmp_path: Path) -> None:
    registry = load_registry([], tmp_path / "configs", SYSTEM_PACKS_PATH)
    assert registry.errors == []
    core = registry.packs["core"]
    assert core.system is True
    for ref in ("core.local", "core.local_sudo", "core.http", "core.noop", "core.echo", "core.pause"):
        assert registry.action(ref).pack == "core"
    assert set(registry.trigger_types) >= CORE_TRIGGERS
    interval = registry.trigger_types["core.st2.IntervalTimer"]
    assert set(interval.parameters_schema["properties"]) == {"unit", "delta", "timezone"}
    assert set(registry.trigger_types["core.st2.generic.notifytrigger"].payload_schema["properties"]) >= {
        "execution_id", "status", "channel", "route", "message", "data"}
    assert set(registry.trigger_types["core.st2.key_value_pair.value_change"].payload_schema["properties"]) == {
        "old_object", "new_object"}


def test_core_action_parameters_match_stackstorm(tmp_path: Path) -> None:
    registry = load_registry([], tmp_path / "configs", SYSTEM_PACKS_PATH)
    local = registry.action("core.local").parameters
    assert local["cmd"]["required"] is True
    assert local["sudo"]["immutable"] is True and local["sudo"]["default"] is False
    sudo = registry.action("core.local_sudo").parameters["sudo"]
    assert sudo["immutable"] is True and sudo["default"] is True
    echo = registry.action("core.echo").parameters
    assert echo["cmd"]["immutable"] is True and echo["cmd"]["default"] == 'echo "{{message}}"'
    assert echo["message"]["required"] is True
    http = registry.action("core.http")
    assert http.runner_type == "http-request"
    assert http.parameters["url"]["required"] is True
    assert "GET" in http.parameters["method"]["enum"]
    assert registry.action("core.noop").runner_type == "noop"
    pause = registry.action("core.pause")
    assert pause.runner_type == "python-script" and pause.entry_path is not None and pause.entry_path.is_file()
    assert pause.parameters["max_pause"]["type"] == "integer"


def test_user_packs_path_that_is_the_system_path_loads_core_once(tmp_path: Path) -> None:
    registry = load_registry([SYSTEM_PACKS_PATH], tmp_path / "configs", SYSTEM_PACKS_PATH)
    assert registry.errors == []
    assert registry.packs["core"].system is True


# --- Squall's own packs missing (a regular install that left packs/ out) ----------------------------

@pytest.mark.parametrize("layout", ["no folder", "empty folder", "no core"])
def test_missing_system_packs_stop_the_load_naming_the_folder(tmp_path: Path, layout: str) -> None:
    """A wheel without `packs/` loaded no core, chatops or squall pack and said nothing: `squall run
    core.echo` then answered 'action not found'. The load stops instead, naming the folder and the fix."""
    shipped = tmp_path / "site-packages" / "packs"
    if layout != "no folder":
        shipped.mkdir(parents=True)
    if layout == "no core":
        manifest(shipped, "linux")
    with pytest.raises(SystemPacksMissing) as caught:
        load_registry([tmp_path / "packs"], tmp_path / "configs", shipped)
    message = str(caught.value)
    assert "\n" not in message
    assert str(shipped) in message and "core/pack.yaml" in message
    assert "built-in packs" in message and "make install" in message and "pip install -e" in message


def test_missing_system_packs_stop_the_cached_load_too(tmp_path: Path) -> None:
    """The CLI's listings load through the pack cache: the same error, before any cache is written."""
    with pytest.raises(SystemPacksMissing):
        load_registry_cached([tmp_path / "packs"], tmp_path / "configs", tmp_path / "nowhere", tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


_WITHOUT_SYSTEM_PACKS = """
import sys
from pathlib import Path

import engine.config

engine.config.SYSTEM_PACKS_PATH = Path(sys.argv.pop(1))  # as a wheel without packs/ has it
from bot.cli import main

sys.argv[0] = "squall"
main()
"""


@pytest.mark.parametrize("command", [("run", "core.echo", "message=hi"), ("pack", "list"), ("action", "list")])
def test_the_cli_says_the_system_packs_are_missing_as_a_setup_error(home: Path, command: tuple[str, ...]) -> None:
    """Exit 3 (Squall cannot work here) with one line, no traceback, whichever way the command loads packs:
    starting Squall (`run`) or the pack cache (`pack list`, `action list`)."""
    import subprocess
    import sys

    missing = home / "site-packages" / "packs"
    done = subprocess.run([sys.executable, "-c", _WITHOUT_SYSTEM_PACKS, str(missing), "-c", str(home / "config.yml"),
                           *command], capture_output=True, text=True, timeout=120, cwd=home)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: ") and str(missing) in line and "make install" in line, line


#: What a wheel is built from: pyproject.toml's packages, README.md (the long description) and packs/.
_WHEEL_SOURCES = ("pyproject.toml", "README.md", "bot", "aliases", "engine", "adapters", "squall_client", "packs")


@pytest.mark.integration
def test_a_wheel_carries_every_file_of_the_system_packs_where_squall_looks(tmp_path: Path) -> None:
    """`pip install <checkout>` (not `-e`) installed no packs/: `engine.config.SYSTEM_PACKS_PATH` is the folder
    beside `engine/` (site-packages/packs in a wheel), and the wheel held no such folder."""
    import shutil
    import subprocess
    import sys
    import zipfile

    repo = SYSTEM_PACKS_PATH.parent
    source = tmp_path / "src"
    source.mkdir()
    skipped = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in _WHEEL_SOURCES:
        if (repo / name).is_dir():
            shutil.copytree(repo / name, source / name, ignore=skipped)
        else:
            shutil.copy2(repo / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-q", "-w", str(tmp_path / "dist"), str(source)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    [wheel] = (tmp_path / "dist").glob("squall-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        modes = {info.filename: info.external_attr >> 16 for info in archive.infolist()}
    assert "engine/config.py" in names  # so the wheel's packs/ is SYSTEM_PACKS_PATH once installed
    shipped = {f"packs/{path.relative_to(source / 'packs').as_posix()}" for path in (source / "packs").rglob("*")
               if path.is_file()}
    assert "packs/core/pack.yaml" in shipped
    assert shipped - names == set()
    assert all(modes[name] & 0o111 for name in shipped if name.endswith(".sh"))  # scripts stay executable


# --- `!pack list` in chat (the squall pack's pack_list alias) ---------------------------------------

def test_pack_list_in_chat_is_one_line_per_pack_and_the_problems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    """The alias posted the CLI's 80-column box table: paths cut mid-word, descriptions wrapped over lines.
    Chat gets one line per pack (ref, version, description as written), then what did not load."""
    import os

    from bot.testing import SquallBot, write_home

    for key in ("SQUALL_CONFIG", "SQUALL_CLI"):  # the assembly sets them; recorded here, undone after the test
        if key in os.environ:
            monkeypatch.setenv(key, os.environ[key])
        else:
            monkeypatch.delenv(key, raising=False)
    description = "Restart web services on every host of the fleet, then check that each answers again."
    pack = tmp_path / "webops"
    write(pack / "pack.yaml", f"ref: webops\nname: webops\ndescription: {description}\nversion: 2.1.0\nauthor: t\n")
    write(pack / "aliases" / "broken.yaml", "name: broken\naction_ref: webops.missing\nformats: [broken]\n")
    home = tmp_path / "home"
    home.mkdir()
    bot = SquallBot(pack, home, timeout=60)
    bot.start(write_home(home, pack, [], {}, None))
    try:
        [ack, listing] = bot.say("!pack list")
    finally:
        bot.close()
    assert ack.startswith("Running squall.pack_list")
    lines = listing.splitlines()
    assert f"webops 2.1.0: {description}" in lines, listing
    core = load_registry([], tmp_path / "configs", SYSTEM_PACKS_PATH).packs["core"]
    assert f"core {core.metadata['version']}: {core.metadata['description']}" in lines, listing
    assert [line.split(" ")[0] for line in lines[:6]] == ["chatops", "core", "linux", "packs", "squall", "webops"], \
        listing
    assert lines[6] == "problems (pack content that did not load):", listing
    assert any("broken.yaml" in line and "webops.missing" in line for line in lines[7:]), listing
    assert not any(mark in listing for mark in "┏┃│└━"), listing


def test_pack_list_in_chat_says_why_when_the_command_failed(tmp_path: Path) -> None:
    """No JSON came out (a config the CLI refuses): the result is the command's error, not an empty post."""
    from aliases import load_aliases
    from bot.chat.replies import render_result

    aliases, _ = load_aliases(load_registry([], tmp_path / "configs", SYSTEM_PACKS_PATH))
    [alias] = [alias for alias in aliases if alias.ref == "squall.pack_list"]
    failed = {"id": "e1", "action": "squall.pack_list", "status": "failed",
              "result": {"stdout": "", "stderr": "error: config.yml: unknown key 'pack'", "return_code": 2}}
    assert render_result(alias, failed)[0] == "✖ squall.pack_list failed: error: config.yml: unknown key 'pack'"


def test_a_problem_is_named_by_its_absolute_path_when_squall_runs_in_the_root_folder(
        tmp_path: Path, demo_pack: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under systemd the working folder is `/`, and every file was named relative to it: the missing config
    was said as `tmp/.../configs/demo.yaml`, which names no file from anywhere else."""
    (tmp_path / "configs" / "demo.yaml").unlink()
    monkeypatch.chdir("/")
    warning = only_error(load(tmp_path))
    assert warning.file == str(tmp_path / "configs" / "demo.yaml"), warning.file
    assert f"packs.configs_path ({tmp_path / 'configs'})" in warning.reason
