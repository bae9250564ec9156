"""The config keys `squall pack install` says are needed ("config needed:"), on Exchange packs' real schemas.

A key is needed when StackStorm's check of the config asks for it: required, without a default, and under
objects that are required too or that the config file sets. The loader hands actions every object filled
in, but an optional object the file leaves out is not checked, so its required keys are not needed (github's
`repository_sensor.repositories`, slack's `post_message_action.username` and `admin.organization`), and
a top-level item a `$ref` points at is the shape of other items (napalm's `cred_group`). The schemas below
are copied from the packs' config.schema.yaml (descriptions and some optional keys left out).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from engine.pack_manager import needed_config_keys
from engine.packs import Pack, Registry, config_problems, load_pack
from tests.conftest import write

GITHUB = """
token: {type: string, default: "{{ st2kv.system.github_oauth_token }}", required: true, secret: true}
user: {type: string}
github_type: {type: string, default: online, enum: [online, enterprise], required: true}
deployment_environment: {type: string, required: true, default: production}
repository_sensor:
  type: object
  required: false
  additionalProperties: false
  properties:
    event_type_whitelist: {type: array, items: {type: string}, required: false, default: [IssuesEvent]}
    repositories:
      type: array
      required: true
      items:
        type: object
        required: true
        properties:
          user: {type: string, required: true}
          name: {type: string, required: true}
    count: {type: integer, required: false, default: 30}
"""

NAPALM = """
html_table_class: {type: string, required: true}
config_repo: {type: string, required: false}
devices:
  required: true
  type: array
  items:
    type: object
    required: true
    properties:
      hostname: {type: string, required: true}
      driver: {type: string, required: true}
      credentials: {type: string, required: true}
credentials:
  type: object
  required: true
  patternProperties:
      "^\\\\w+":
        "$ref": "#/properties/cred_group"
  additionalProperties: false
cred_group:
  type: object
  properties:
    username: {type: string, required: true}
    password: {type: string, secret: true, required: false}
  additionalProperties: false
"""

SLACK = """
post_message_action:
  type: object
  required: false
  additionalProperties: false
  properties:
    webhook_url: {type: string, required: false, secret: true}
    username: {type: string, required: true}
sensor:
  type: object
  required: false
  properties:
    token: {type: string, default: "", required: false, secret: true}
    strip_formatting: {type: boolean, default: false, required: false}
action_token: {type: string, required: false, secret: true}
admin:
  type: object
  required: false
  additionalProperties: false
  properties:
    admin_token: {type: string, default: "", required: false, secret: true}
    organization: {type: string, required: true}
    set_active: {type: boolean, default: true, required: false}
"""


def loaded(tmp_path: Path, schema: str, config: str | None) -> Pack:
    """The pack `demo` with `schema`, loaded by the pack loader with `config` as its config file (None: none)."""
    folder = tmp_path / "packs" / "demo"
    write(folder / "pack.yaml", "ref: demo\nname: demo\ndescription: d\nversion: 0.1.0\nauthor: tests\n")
    write(folder / "config.schema.yaml", schema)
    if config is not None:
        write(tmp_path / "configs" / "demo.yaml", config)
    pack = load_pack(folder, Registry(), tmp_path / "configs", None)
    assert pack is not None
    return pack


@pytest.mark.parametrize(("schema", "config", "needed"), [
    # no config file yet: only what is required at every level, and never a `$ref`'s target
    (GITHUB, None, []),
    (NAPALM, None, ["html_table_class", "devices", "credentials"]),
    (SLACK, None, []),
    # the real configs people write without the optional objects: nothing more to set
    (GITHUB, "token: abc\n", []),
    (NAPALM, "html_table_class: t\ndevices: []\ncredentials: {core: {username: u}}\n", []),
    (SLACK, "action_token: xoxb\nsensor: {token: xoxp}\n", []),
    # an optional object the file sets must be whole: its required keys are needed
    (GITHUB, "repository_sensor: {count: 5}\n", ["repository_sensor.repositories"]),
    (SLACK, "admin: {admin_token: xoxa}\npost_message_action: {webhook_url: https://hooks.example}\n",
     ["post_message_action.username", "admin.organization"]),
    (SLACK, "admin: {admin_token: xoxa, organization: acme}\n", []),
])
def test_the_keys_needed_are_the_ones_the_configs_check_asks_for(tmp_path: Path, schema: str, config: str | None,
                                                               needed: list[str]) -> None:
    pack = loaded(tmp_path, schema, config)
    assert needed_config_keys(pack) == needed
    if config is not None:  # the check of the file agrees: it misses exactly these
        written = yaml.safe_load((tmp_path / "configs" / "demo.yaml").read_text())
        missing = [problem for error, problem in config_problems(pack.config_schema, written)
                   if error.validator == "required"]
        assert len(missing) == len(needed), missing
