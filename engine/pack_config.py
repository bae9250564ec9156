"""Pack config values as StackStorm's `ContentPackConfigLoader` gives them to a run (spec §9.2).

A config string holding `{{` or `{%` is a dynamic value, rendered per run (for the execution's
user) or at a sensor's start, with `st2kv` and `decrypt_kv`; a value at or under a `secret: true`
item is secret: scrubbed from what the pack's runs show, and quoted in no error. The walk finds each
value's schema as StackStorm's loader does. `ExecutionService` and the sensor container use these.

A config as people see it has its secret items masked (`masked_config`: the web UI's pack page, the
API's `/configs`); one sent back with those masks keeps the stored secrets (`restore_masked`), and is
written whole, atomically and 0600 (`write_config_file`), as StackStorm's `PUT /configs/<pack>` does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import yaml

from engine.crypto import CryptoError
from engine.files import write_atomically
from engine.parameters import MASK, MIN_REPLACED, ParameterError, item_schema, property_schema, schema_masked
from engine.templates import TemplateRenderError, is_jinja_expression

#: The runner whose actions get the pack's config rendered (StackStorm loads it for the Python runner alone).
PYTHON_RUNNER = "python-script"


class ConfigValueError(ParameterError):
    """A dynamic pack config value that did not render; the message quotes no secret."""


#: Renders one dynamic config value: `(its template, whether it is or is under a secret item) -> value`.
ConfigRender = Callable[[str, bool], Any]
#: What a config leaf becomes: `(its key path, its value, whether it is secret) -> new value`.
_Leaf = Callable[[tuple[str, ...], Any, bool], Any]


def render_dynamic_config(pack: str, config: Mapping[str, Any], schema: Mapping[str, Any],
                          render: ConfigRender) -> dict[str, Any]:
    """A copy of a pack's config with each dynamic value replaced by `render(template, secret)`, as
    StackStorm's `ContentPackConfigLoader` resolves them when an action or sensor starts.

    A dynamic value is a string holding `{{` or `{%`, at any depth: in nested objects and list items,
    whose schema is found as StackStorm finds it (`properties`, then `patternProperties`, then
    `additionalProperties`; `items`, positional or not, then `additionalItems`). Other values are kept
    as they are. The config itself is not changed: the next run renders it again, for its own user.
    A failure is a ParameterError naming the pack and the key (`auth.token`, `servers.0.password`)."""

    def leaf(path: tuple[str, ...], value: Any, secret: bool) -> Any:
        if not is_jinja_expression(value):
            return value
        try:
            return render(value, secret)
        except (ParameterError, CryptoError) as exc:
            raise ParameterError(f'pack "{pack}" config key "{".".join(path)}": its dynamic value could not be '
                                 f"rendered: {exc}") from None

    return _map_config(config, {"properties": schema}, (), False, leaf)


def config_facts(config: Mapping[str, Any], schema: Mapping[str, Any]) -> tuple[bool, list[Any]]:
    """Whether a pack's config holds dynamic values, and its values at or under a `secret: true` item
    (nested ones included) that are not templates: scrubbed from what its actions' runs show. Texts and
    numbers only: a flag under a secret object (`enabled: true`) would mask every `true` in a result."""
    dynamic = False
    secrets: list[Any] = []

    def leaf(path: tuple[str, ...], value: Any, secret: bool) -> Any:
        nonlocal dynamic
        if is_jinja_expression(value):
            dynamic = True
        elif secret and isinstance(value, str | int | float) and not isinstance(value, bool):
            secrets.append(value)
        return value

    _map_config(config, {"properties": schema}, (), False, leaf)
    return dynamic, secrets


def _map_config(value: Any, schema: Any, path: tuple[str, ...], secret: bool, leaf: _Leaf) -> Any:
    """`value` rebuilt with `leaf` applied to each of its scalars, told whether it is secret."""
    schema = schema if isinstance(schema, dict) else {}
    secret = secret or schema.get("secret") is True
    if isinstance(value, dict):
        return {key: _map_config(item, property_schema(schema, key), (*path, str(key)), secret, leaf)
                for key, item in value.items()}
    if isinstance(value, list):
        return [_map_config(item, item_schema(schema, index), (*path, str(index)), secret, leaf)
                for index, item in enumerate(value)]
    return leaf(path, value, secret)


def config_value_error(exc: TemplateRenderError, template: str, secret: bool,
                       hidden: Sequence[str]) -> ConfigValueError:
    """Why a dynamic config value did not render, quoting none of `hidden` (what it read of secret keys
    and what `decrypt_kv` revealed) and, for a secret item, not its text: a secret that merely holds `{{`
    is rendered too (as StackStorm renders it), and a syntax or undefined-name error would quote a part."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    if secret and isinstance(cause, jinja2.TemplateSyntaxError | jinja2.UndefinedError):
        return ConfigValueError(
            f"{type(cause).__name__} (not quoted: the item is secret). A value holding {{{{ or {{% is rendered "
            "as a template, as StackStorm renders it; keep such a secret in the datastore, encrypted, and "
            "write {{ st2kv.system.<key> }} here")
    reason = f"{type(cause).__name__}: {cause}" if secret else str(exc)
    texts = [*hidden, *([template, *(line.strip() for line in template.splitlines())] if secret else [])]
    for text in sorted((t for t in texts if len(t) >= MIN_REPLACED), key=len, reverse=True):
        reason = reason.replace(text, MASK)
    return ConfigValueError(reason)


class MaskedSecretError(ValueError):
    """A config sent back with a secret item masked (`********`) where no stored value is there to keep."""


#: A config item `restore_masked` found masked with nothing stored to keep: left out, or refused.
_ABSENT: Any = object()


def masked_config(schema: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A pack's config with every value its schema marks `secret: true` shown as `********`, at any depth;
    a value's schema is found as the loader finds it (`properties`, `patternProperties`,
    `additionalProperties`; `items`, positional or not, `additionalItems`). A secret object or list is
    masked whole. `schema` is the pack's config.schema.yaml: a mapping of top-level keys to their specs."""
    return schema_masked({"properties": schema}, values)  # type: ignore[no-any-return]  # a mapping stays one


def restore_masked(sent: Mapping[str, Any], stored: Mapping[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    """`sent` (a config as a client sends it back after reading it masked: the web UI, `st2 pack config`
    with a secret left as shown) with each `********` at or under a secret item replaced by the stored
    value at the same place, as StackStorm's clients send masked values back to mean "unchanged".
    Where nothing is stored there, an item with a schema `default` is left out (the default applies);
    otherwise `MaskedSecretError` names its key path: the mask written as the secret would break the
    pack's runs with a value nobody chose. A mask anywhere else is a value like any other."""
    return _restored_object(sent, stored, {"properties": schema}, (), False)


def _restored(value: Any, stored: Any, spec: Any, path: tuple[str, ...], secret: bool) -> Any:
    spec = spec if isinstance(spec, Mapping) else {}
    secret = secret or bool(spec.get("secret"))
    if secret and value == MASK:
        return stored
    if isinstance(value, Mapping):
        return _restored_object(value, stored, spec, path, secret)
    if isinstance(value, list):
        kept = stored if isinstance(stored, list) else []
        items = [_restored(item, kept[index] if index < len(kept) else _ABSENT, item_schema(spec, index),
                           (*path, str(index)), secret) for index, item in enumerate(value)]
        for index, item in enumerate(items):
            if item is _ABSENT:
                raise _nothing_kept((*path, str(index)))
        return items
    return value


def _restored_object(value: Mapping[str, Any], stored: Any, spec: Mapping[str, Any], path: tuple[str, ...],
                     secret: bool) -> dict[str, Any]:
    kept = stored if isinstance(stored, Mapping) else {}
    restored: dict[str, Any] = {}
    for key, item in value.items():
        item_spec = property_schema(spec, key)
        new = _restored(item, kept.get(key, _ABSENT), item_spec, (*path, str(key)), secret)
        if new is not _ABSENT:
            restored[key] = new
        elif not (isinstance(item_spec, Mapping) and "default" in item_spec):
            raise _nothing_kept((*path, str(key)))
    return restored


def _nothing_kept(path: tuple[str, ...]) -> MaskedSecretError:
    return MaskedSecretError(f"{'.'.join(path)}: sent as {MASK}, the mask of a secret, which keeps the stored "
                             "value, but the config file holds no stored value there: send the secret itself")


def write_config_file(file: Path, values: Mapping[str, Any]) -> None:
    """Write a pack's config file whole, as StackStorm's API writes it (plain YAML; comments are not kept):
    a temporary file beside it, synced, then renamed over it, so no loader reads half a file, and 0600,
    since it holds secrets. A file that is a symbolic link is written where it points, as StackStorm's
    `open(path, "w")` does, so a config kept elsewhere stays there."""
    target = file.resolve() if file.is_symlink() else file
    text = yaml.safe_dump(dict(values), default_flow_style=False, sort_keys=False, allow_unicode=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(target, text.encode("utf-8"))  # 0600
