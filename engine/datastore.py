"""The key-value datastore (spec §8): system and user scopes, string values, TTL, encryption.

Methods are synchronous and short; asynchronous callers run them through `storage.Database`.
User-scoped keys are stored as `<user>:<name>`, as StackStorm does, so a user only ever sees
their own. Encrypted values stay ciphertext unless a caller asks for decryption.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from engine.crypto import CryptoError, KeyRing
from engine.storage import Store, kv_pairs, utcnow

if TYPE_CHECKING:  # engine.executions imports this module
    from engine.executions import AuditEntry

SCOPES = ("system", "user")

#: The longest `ttl` of a key (100 years, in seconds): longer ones overflow the expiry date. Held here, in
#: `set`, so the API, the CLI, the web UI and actions' `set_value` all stop at the same place.
MAX_KEY_TTL = 100 * 365 * 24 * 3600

#: The longest stored name (the `kv_pairs.name` column): a user-scoped key's counts its `<user>:` prefix.
#: PostgreSQL refused a longer one with a 500 and SQLite kept it, so it is checked before either sees it.
MAX_NAME_LENGTH: int = kv_pairs.c.name.type.length  # type: ignore[attr-defined]


#: The character no value, description, name or user of a key may hold (`check_text`, `owner`).
NUL = "\x00"


class DatastoreError(ValueError):
    """A datastore request that cannot be done; the message says why."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        #: The part of the request that is wrong, where a check names it (`check_text`, `owner`, `check_prefix`:
        #: "name", "user", "value", "description", "prefix"), for a form to show the message beside that field.
        self.field = field


def _visible(text: str) -> str:
    """`text` with each NUL written `\\x00` and each lone surrogate `\\udce9`, for a message that quotes it:
    a terminal shows a NUL as nothing, and a lone surrogate cannot be written as UTF-8 at all."""
    return text.replace(NUL, "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def lone_surrogate(text: str) -> int | None:
    """Where (from 1) `text` holds its first lone UTF-16 surrogate, or None when it is valid Unicode. A
    command-line argument that is not UTF-8 (a Latin-1 `café` pasted) reaches Python so, each undecodable
    byte a surrogate (`\\udce9`); no UTF-8 database column can store one, and the driver's
    UnicodeEncodeError was a traceback. Shared by every check of text Squall is asked to store."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start + 1
    return None


def not_utf8(what: str, at: int) -> str:
    """The words refusing text (`what` names it: "key 'x': its value") for the lone surrogate at `at`. The
    character is not quoted: it would be a byte of a secret value."""
    return (f"{what} is not valid UTF-8 text: position {at} holds a lone UTF-16 surrogate (what a command line "
            "makes of a byte that is not UTF-8, such as a Latin-1 é), which cannot be stored; give the text in UTF-8")


def check_text(name: str, what: str, text: str | None) -> None:
    """A DatastoreError when `text` (the key's `what`: its name, value or description) holds a NUL
    character or is not valid UTF-8. PostgreSQL's text columns refuse a NUL (a DataError: the API's 500, an
    action's traceback) and SQLite kept it, so a key SQLite held could not move to PostgreSQL; refused here,
    before either database sees it, so every entry point (API, CLI, web, actions) says the same on both.
    A lone surrogate (`lone_surrogate`) neither can store: the driver raised UnicodeEncodeError."""
    if text is None:
        return
    if (bad := lone_surrogate(text)) is not None:
        raise DatastoreError(not_utf8(f"key '{_visible(name)}': its {what}", bad), field=what)
    if NUL not in text:
        return
    at = text.index(NUL) + 1
    raise DatastoreError(f"key '{_visible(name)}': its {what} holds a NUL character (\\x00) at position {at}, which "
                         "PostgreSQL cannot store as text; remove it (binary data can be stored as base64 or hex "
                         "text)", field=what)


def check_prefix(prefix: str | None) -> None:
    """A DatastoreError for a listing's prefix holding a NUL character: PostgreSQL's LIKE raised a DataError
    (the API's 500) where SQLite listed nothing. No key's name holds one (`check_text`)."""
    if prefix is not None and (bad := lone_surrogate(prefix)) is not None:
        raise DatastoreError(not_utf8("the prefix", bad), field="prefix")
    if prefix is not None and NUL in prefix:
        raise DatastoreError(f"the prefix holds a NUL character (\\x00) at position {prefix.index(NUL) + 1}, "
                             "which no key's name holds; remove it", field="prefix")


def normalise_scope(scope: str | None) -> str:
    value = scope or "system"
    if not isinstance(value, str) or value.removeprefix("st2kv.") not in SCOPES:
        raise DatastoreError(f"unknown scope '{scope}'; use 'system' or 'user'")
    return value.removeprefix("st2kv.")


def check_ttl(ttl: Any) -> int | None:
    """`ttl` as a whole number of seconds from 1 to `MAX_KEY_TTL`, or None for a key that never expires.
    Anything else is a DatastoreError that says so: a string such as "soon" was a ValueError traceback,
    and a huge number an OverflowError, after a `squall key load` had written the items before it."""
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int):
        raise DatastoreError(f"ttl must be a whole number of seconds from 1 to {MAX_KEY_TTL}, not {ttl!r}")
    if ttl <= 0:
        raise DatastoreError(f"ttl must be a positive number of seconds, not {ttl}; leave the ttl out for a key "
                             "that never expires")
    if ttl > MAX_KEY_TTL:
        raise DatastoreError(f"ttl must be at most {MAX_KEY_TTL} seconds (100 years), not {ttl}.")
    return ttl


def st2_ttl(ttl: Any) -> Any:
    """A ttl as StackStorm's datastore service and API read it: a falsy one (0, None) is a key that never
    expires (they set the ttl only `if ttl:`, so a pack config's `cache_ttl: 0` passed to `set_value` means
    "keep it"); any other is left for `check_ttl`. For what actions, sensors and the API send; Squall's
    own CLI refuses `--ttl 0` (leaving `--ttl` out is how it says "never expires")."""
    return ttl or None


def owner(user: str | None) -> str:
    """The user of user-scoped keys, checked: their keys are stored as `<user>:<name>` and read back by the
    first `:`, so a user named `a:b` would read and write user `a`'s keys named `b:...`."""
    if not user:
        raise DatastoreError("a user-scoped key needs a user")
    if NUL in user:  # PostgreSQL's DataError (a 500) on every read and write of such a user's keys
        raise DatastoreError(f"user '{_visible(user)}' cannot have user-scoped keys: the user "
                             f"name holds a NUL character (\\x00) at position {user.index(NUL) + 1}, which "
                             "PostgreSQL cannot store as text", field="user")
    if ":" in user:
        raise DatastoreError(f"user '{user}' cannot have user-scoped keys: a user name with ':' would name "
                             "another user's keys (they are stored as <user>:<name>)")
    return user


def check_key(name: Any, *, scope: str | None = "system", user: str | None = None,
              ttl: Any = None) -> tuple[str, str, int | None]:
    """Everything `Datastore.set` checks before it writes: the scope, the name (a non-empty string whose
    stored form fits `MAX_NAME_LENGTH`), the user of a user-scoped key and the ttl. Returns the scope, the
    stored name and the ttl. Public so that `squall key load` checks every item before it writes any."""
    scope = normalise_scope(scope)
    if not isinstance(name, str) or not name:
        raise DatastoreError(f"a key needs a name (a non-empty string), not {name!r}")
    if scope == "user" and user is not None and not isinstance(user, str):
        raise DatastoreError(f"key '{name}': the user of a user-scoped key is a name (a string), not {user!r}")
    stored = Datastore.stored_name(name, scope, user)
    if len(stored) > MAX_NAME_LENGTH:
        shown = name if len(name) <= 40 else f"{name[:40]}…"
        counted = f" (counting its '{user}:' prefix)" if scope == "user" else ""
        raise DatastoreError(f"key name '{shown}' is too long: {len(stored)} characters{counted}; "
                             f"the longest a key's stored name may be is {MAX_NAME_LENGTH}")
    return scope, stored, check_ttl(ttl)


def _check_texts(name: str, value: str, description: str | None) -> None:
    """What `set` and `check_write` look at beyond `check_key`: no NUL in the value or the description."""
    check_text(name, "value", value)
    check_text(name, "description", description)


#: `changed(kind, payload)`: kind is create, update, delete or value_change (StackStorm's KV triggers).
ChangeListener = Callable[[str, dict[str, Any]], None]


def first_sealed_value(store: Store) -> str | None:
    """One value the database holds sealed, named as `squall key rotate` names it ("key system:pw"), or None
    when it holds none: what a `KeyRing` asks before it makes a first key (`KeyRing.sealed_without_key`).
    One short query a column (`Store.SEALED_COLUMNS`), on a connection of its own: it runs only when there
    is no key file."""
    with store.engine.connect() as conn:
        for what, table, key, column, only in Store.SEALED_COLUMNS:
            row = conn.execute(sa.select(*(table.c[name] for name in key)).where(
                table.c[column].is_not(None), *([] if only is None else [only])).limit(1)).first()
            if row is not None:
                return f"{what} {':'.join(map(str, row))}"
    return None


@dataclass
class Datastore:
    store: Store
    keys: KeyRing
    #: Told of every write once it committed (`Store.after_commit`), for the `core.st2.key_value_pair.*`
    #: triggers; None costs nothing.
    on_change: ChangeListener | None = None

    def __post_init__(self) -> None:
        # Where a key ring meets its database (every process that seals builds one): a first key is made
        # only for a database that holds nothing sealed; a missing key file beside secrets is restored.
        if self.keys.sealed_without_key is None:
            store = self.store
            self.keys.sealed_without_key = lambda: first_sealed_value(store)

    @staticmethod
    def stored_name(name: str, scope: str, user: str | None) -> str:
        """The name a pair is stored under: `<user>:<name>` in the user scope, as StackStorm stores it. Every
        read, write and delete names a key through here: a NUL in the name (`check_text`) or user (`owner`) is
        refused."""
        check_text(name, "name", name)
        if scope == "user":
            return f"{owner(user)}:{name}"
        return name

    def _public(self, record: dict[str, Any], decrypt: bool, strict: bool = True) -> dict[str, Any]:
        name, user = record["name"], None
        if record["scope"] == "user":
            user, _, name = name.partition(":")
        value = record["value"]
        error = None
        if record["secret"] and decrypt:
            try:
                value = self.keys.decrypt(value)
            except CryptoError as exc:
                if strict:
                    raise CryptoError(f"key '{record['name']}': {exc}") from exc
                value, error = None, f"cannot decrypt: {exc}"
        return {
            "name": name,
            "value": value,
            "secret": record["secret"],
            "encrypted": bool(record["secret"] and not decrypt),
            "scope": f"st2kv.{record['scope']}",
            "user": user,
            "description": record.get("description"),
            "expire_timestamp": record["expire_at"].isoformat() if record.get("expire_at") else None,
            **({"error": error} if error else {}),
        }

    def get(self, name: str, *, scope: str = "system", user: str | None = None,
            decrypt: bool = False) -> dict[str, Any] | None:
        scope = normalise_scope(scope)
        record = self.store.kv_get(scope, self.stored_name(name, scope, user), utcnow())
        return self._public(record, decrypt) if record else None

    def lookup(self, scope: str, name: str, on_secret: Callable[[str], Any] | None = None) -> str | None:
        """The raw stored value (ciphertext for secrets), for `st2kv.*` in templates; a secret's is also
        handed to `on_secret` (a request notes it, so that none of its errors quotes it)."""
        record = self.store.kv_get(scope, name, utcnow())
        if record is None:
            return None
        if on_secret is not None and record["secret"]:
            on_secret(record["value"])
        return record["value"]

    def _refuse_mask(self, name: str, text: str, scope: str, stored: str, secret: bool, now: datetime) -> None:
        """A DatastoreError when `text` is the mask Squall shows in place of a secret (`st2 key list -j`
        without `--decrypt` exports it) and writing it would put the mask where a secret is or is meant
        to be: as a secret, or over a key that holds one. Restoring such an export once replaced every
        secret with eight asterisks."""
        from engine.parameters import MASK  # only on writes: `squall key get` never imports Jinja

        if text != MASK:
            return
        if not secret:
            existing = self.store.kv_get(scope, stored, now)
            if existing is None or not existing["secret"]:
                return
        raise DatastoreError(
            f"key '{name}': the value {MASK!r} is the mask shown in place of a secret, not the secret, and "
            "writing it would replace the secret with the mask; export secrets with their values "
            "(st2 key list --decrypt -j, or squall key list --decrypt --json) and load that file: items "
            "with secret: true are encrypted again here")

    def ciphertext(self, name: str, text: str) -> str:
        """`text` when it is ciphertext this server's key ring decrypts (an `encrypted: true` value, stored
        as given, as StackStorm verifies it), else a DatastoreError naming the problem and the way out.
        Public so that `squall key load` checks every item before it writes any."""
        try:
            self.keys.decrypt(text)
        except CryptoError as exc:
            raise DatastoreError(
                f"key '{name}': encrypted: true says the value is already ciphertext under this server's "
                f"key, but it is not valid ciphertext for it ({exc}); send the plain value with secret: true "
                "instead (st2 key list --decrypt exports it) and it is encrypted here") from None
        return text

    def check_write(self, name: str, value: Any, *, scope: str = "system", user: str | None = None,
                    encrypt: bool = False, ttl: Any = None, encrypted: bool = False,
                    description: str | None = None) -> None:
        """A DatastoreError for anything `set` with these arguments would refuse, writing nothing: so that
        `squall key load` checks every item (the mask over a stored secret included) before it writes any."""
        scope, stored, _ = check_key(name, scope=scope, user=user, ttl=ttl)
        text = str(value)
        _check_texts(name, text, description)
        self._refuse_mask(name, text, scope, stored, encrypt or encrypted, utcnow())
        if encrypted:
            self.ciphertext(name, text)

    def set(self, name: str, value: Any, *, scope: str = "system", user: str | None = None,
            encrypt: bool = False, ttl: int | None = None, description: str | None = None,
            encrypted: bool = False, audit: AuditEntry | None = None) -> dict[str, Any]:
        """Store one pair. `encrypt` seals the value with the key ring; `encrypted` says it is ciphertext
        already (StackStorm's `encrypted: true`, what `st2 key set --encrypted` and a ciphertext export
        send), which is checked to decrypt and stored as given. Either makes the pair a secret, and a
        secret is never overwritten with the mask that stands for it (`_refuse_mask`).

        `audit` (who set it) is stored with the pair, in its transaction: both or neither
        (`AuditEntry.together`); about the key's name unless it names its own target, its detail gaining
        the scope, the user of a user-scoped key and whether the value is a secret."""
        scope, stored, ttl = check_key(name, scope=scope, user=user, ttl=ttl)
        now = utcnow()
        text = str(value)
        _check_texts(name, text, description)
        self._refuse_mask(name, text, scope, stored, encrypt or encrypted, now)
        if encrypted:
            text = self.ciphertext(name, text)
        record = {
            "scope": scope,
            "name": stored,
            "value": text if encrypted else self.keys.encrypt(text) if encrypt else text,
            "secret": bool(encrypt or encrypted),
            "description": description,
            "expire_at": now + timedelta(seconds=ttl) if ttl else None,
            "updated_at": now,
        }
        listener = self.on_change
        with audit.together(self.store) if audit is not None else contextlib.nullcontext():
            old = self.store.kv_get(scope, record["name"], now) if listener is not None else None
            self.store.kv_put(record)
            new = self._public(record, decrypt=False)
            if audit is not None:  # before the listener: a failing event leaves no trigger of a change undone
                audit.add(self.store, name, scope=scope, user=new["user"], secret=new["secret"])
        if listener is not None:
            self.store.after_commit(lambda: self._tell_set(listener, old, record, new))
        return new

    def _tell_set(self, listener: ChangeListener, old: dict[str, Any] | None, record: dict[str, Any],
                  new: dict[str, Any]) -> None:
        """`set`'s changes, told once the write committed."""
        listener("update" if old else "create", {"object": new})
        if old and old["value"] != record["value"]:  # as StackStorm: updates that change the value
            listener("value_change", {"old_object": self._public(old, decrypt=False), "new_object": new})

    def delete(self, name: str, *, scope: str = "system", user: str | None = None,
               audit: AuditEntry | None = None) -> bool:
        """Delete one pair; False if there was none. `audit` (who deleted it) is stored with the deletion,
        in its transaction, only if a pair was deleted; about the key's name unless it names its own
        target, its detail gaining the scope."""
        scope = normalise_scope(scope)
        stored = self.stored_name(name, scope, user)
        listener = self.on_change
        with audit.together(self.store) if audit is not None else contextlib.nullcontext():
            old = self.store.kv_get(scope, stored, utcnow()) if listener is not None else None
            deleted = self.store.kv_delete(scope, stored)
            if deleted and audit is not None:
                audit.add(self.store, name, scope=scope)
        if deleted and listener is not None and old is not None:
            gone = self._public(old, decrypt=False)
            self.store.after_commit(lambda: listener("delete", {"object": gone}))
        return deleted

    def list(self, *, prefix: str | None = None, scope: str | None = "system", user: str | None = None,
             decrypt: bool = False, limit: int | None = None, offset: int = 0) -> list[dict[str, Any]]:
        """The live pairs of `scope` ("all" or None: both), sorted by scope and stored name. `prefix` is a
        prefix of the key's own name, a user-scoped key's included (not of its stored `<user>:<name>`).
        With `user`, the user-scoped pairs are only that user's (with scope "all": the system keys and
        their own, never another user's); without, every user's (an administrator's view)."""
        scope = None if scope in (None, "all") else normalise_scope(scope)
        user = owner(user) if user is not None else None
        check_prefix(prefix)
        records = self.store.kv_list(scope, None, utcnow(), limit, offset=offset, name_prefix=prefix, user=user)
        return [self._public(r, decrypt, strict=False) for r in records]

    def count(self, *, prefix: str | None = None, scope: str | None = "system", user: str | None = None) -> int:
        """How many pairs `list` with the same arguments and no limit returns (the API's `X-Total-Count`)."""
        scope = None if scope in (None, "all") else normalise_scope(scope)
        user = owner(user) if user is not None else None
        check_prefix(prefix)
        return self.store.kv_count(scope, utcnow(), name_prefix=prefix, user=user)

    def purge_expired(self) -> int:
        return self.store.kv_purge_expired(utcnow())


@dataclass
class RotationReport:
    key_id: str
    reencrypted: int
    unreadable: list[str]
    retired: int
    #: The other Squall processes that used the database when the old keys were to go: they were kept.
    in_use_by: list[str] = field(default_factory=list)
    #: Secrets still changing (or still stored under an old key) at its last pass: old keys kept for them.
    changed: int = 0


#: Passes over the secrets: a secret changed during one pass (compare-and-swap missed) is taken again, and
#: the last pass finds nothing left under an old key (`_rotation`).
_ROTATION_PASSES = 4


def _nobody() -> list[str]:
    return []


def _sealed_by(keys: KeyRing, value: str) -> str | None:
    """The key id `value` names, None for the single-key format or a value that is no ciphertext."""
    try:
        return keys.key_id_of(value)
    except (ValueError, UnicodeError):
        return None


def _reencrypted(keys: KeyRing, value: str) -> str:
    return keys.encrypt(keys.decrypt(value))


def _reencrypt_pass(store: Store, keys: KeyRing, new_id: str) -> tuple[int, int, list[str]]:
    """Every ciphertext not sealed under `new_id` yet (each column `Store.SEALED_COLUMNS` names: secret
    keys, executions' and approvals' sealed parameters, chat sessions), re-encrypted under it and swapped
    in where it did not change meanwhile. Returns how many were written, how many changed meanwhile, and
    the unreadable."""
    unreadable: list[str] = []
    swaps: list[tuple[str, tuple[Any, ...], str, str]] = []
    for what, key, value in store.sealed_values():
        if _sealed_by(keys, value) != new_id:
            try:
                swaps.append((what, key, value, _reencrypted(keys, value)))
            except CryptoError as exc:
                unreadable.append(f"{what} {':'.join(map(str, key))}: {exc}")
    missed = store.swap_sealed_values(swaps)
    return len(swaps) - missed, missed, unreadable


def _first_pass(store: Store, keys: KeyRing, new_id: str, audit: AuditEntry) -> tuple[int, int, list[str]]:
    """A rotation's first pass (`_reencrypt_pass`) and its audit event, about the new key, in one transaction
    (`AuditEntry.together`): the rotation's first database write, so an event the database does not take
    re-encrypts nothing, and the rotation stops before it retires anything. The event's detail gains what the
    pass did: how many secrets it re-encrypted, how many changed meanwhile (the next pass takes them) and
    how many could not be read (the old keys then stay)."""
    from engine.executions import AuditEntry

    with AuditEntry.together(store):
        written, changed, unreadable = _reencrypt_pass(store, keys, new_id)
        audit.add(store, new_id, reencrypted=written, changed=changed, unreadable=len(unreadable))
    return written, changed, unreadable


#: One database call of a rotation, as `_rotation` asks for it: the function and its arguments.
_Call = tuple[Callable[..., Any], tuple[Any, ...]]


def _rotation(store: Store, keys: KeyRing, progress: Callable[[str], None], others: Callable[[], list[str]],
              audit: AuditEntry | None = None) -> Generator[_Call, Any, RotationReport]:
    """The steps of a rotation (see `rotate_key`), asking its caller for each database call.

    `audit` (who rotated, from where) is stored with the first pass over the secrets (`_first_pass`), the
    rotation's first database write, its detail naming the keys it means to retire (`old_keys`): an event the
    database does not take stops the rotation with nothing re-encrypted and no key retired. Retiring comes
    after every pass, so no key goes unaudited. Written after the rotation, an event that failed left the old
    keys retired by nobody. The key added first stays then, as after a rotation killed at that point.

    The key file is changed here only, never inside a database call: `storage.Database` runs a group of
    calls again when it met another process's SQLite lock, and a rotation made as one call added its key
    once per run, and could retire the old keys in a run whose re-encrypted secrets were then rolled back.
    Each database call here (a pass, `others`) may run again: it changes no file. The whole rotation holds
    the key file's lock (`KeyRing.rotating`): a second rotation at once is refused, as two that overlapped
    each kept only the file's first key, the other's, and lost every secret.

    Once the new key is in the file, the rotation waits for the writes that seal a value and store it
    (`KeyRing.sealing`: `squall key set --encrypt`, `squall key load`) to commit before it reads any secret:
    one that sealed under the old key and stored it just after the rotation's pass had read the secrets was
    left under a key the rotation then retired. That wait is the guarantee, for the writes that hold the
    lock; it costs them a `flock` each and a chat command that seals nothing, nothing. A write that does
    not hold it (a running service's, which `others` keeps the old keys for) gets the passes: they go on
    until one finds nothing left under an old key, so a ciphertext stored under one after a pass read the
    secrets is re-encrypted by the next."""
    with keys.rotating():
        old_ids = keys.key_ids()
        new_id = keys.add_key()
        progress(f"added key {new_id}; re-encrypting secrets")
        keys.wait_for_sealing(lambda: progress("waiting for the secrets being stored now (squall key set "
                                               "--encrypt, key load) to be committed"))
        reencrypted, changed, unreadable = 0, 0, []
        for number in range(_ROTATION_PASSES):
            step: _Call = ((_first_pass, (store, keys, new_id, audit.with_facts(old_keys=old_ids)))
                           if audit is not None and number == 0 else (_reencrypt_pass, (store, keys, new_id)))
            written, changed, unreadable = yield step
            reencrypted += written
            if not (written or changed):
                break  # nothing left under an old key (what could not be read aside)
            if changed:
                progress(f"{changed} secrets changed while they were re-encrypted; taking them again")
        else:
            changed = changed or written  # its last pass still found some: more may have come after it
        progress(f"re-encrypted {reencrypted} secrets (secret keys, executions' and approvals' sealed parameters, "
                 "chat sessions)")
        if unreadable or changed:
            return RotationReport(new_id, reencrypted, unreadable, 0, changed=changed)
        in_use_by = yield others, ()
        if in_use_by:
            return RotationReport(new_id, reencrypted, [], 0, in_use_by=in_use_by)
        return RotationReport(new_id, reencrypted, [], keys.retire_old_keys(keep=new_id, retire=old_ids))


def _advance(steps: Generator[_Call, Any, RotationReport], ok: bool, value: Any) -> _Call | RotationReport:
    """The rotation's next database call, handed the last one's result (or its exception), or its report."""
    try:
        return steps.send(value) if ok else steps.throw(value)
    except StopIteration as done:
        return done.value


def rotate_key(store: Store, keys: KeyRing, progress: Callable[[str], None] = lambda _m: None, *,
               others: Callable[[], list[str]] = _nobody) -> RotationReport:
    """Re-encrypt every secret under a new key without a moment where any secret is unreadable: every
    ciphertext the database holds (`Store.SEALED_COLUMNS`: secret keys, executions' and held approvals'
    sealed parameters, open chat sessions), or retiring the old keys would lose what it still seals.

    The new key is added to the ring first (a running service's `KeyRing` encrypts under it from then
    on); each ciphertext is replaced only if it did not change meanwhile, and one that did is taken
    again in another pass. Ciphertexts that cannot be decrypted are reported by name and left as they
    were, and then the old keys stay too, so nothing that could be read before is lost. The old keys
    also stay while `others()` names another Squall process using the database (`Engine.other_processes`;
    the default, none, is for a caller that knows it is alone): it may have sealed a secret under an old
    key just before the new one was added, or hold one it read. A later rotation, with it stopped,
    retires them; only the keys the file held when this rotation began go, never the one it sealed under.
    The whole rotation holds the key file's lock: another one under way makes it raise RotationUnderWay.

    The database calls run here, directly: for a caller holding the `Store` alone. Through a
    `storage.Database`, use `rotate_key_through`.
    """
    steps = _rotation(store, keys, progress, others)
    try:
        step = _advance(steps, True, None)
        while not isinstance(step, RotationReport):
            function, args = step
            try:
                ok, value = True, function(*args)
            except Exception as exc:
                ok, value = False, exc
            step = _advance(steps, ok, value)
        return step
    finally:
        steps.close()  # stopped midway (Ctrl-C): the key file's lock is let go here, not when collected


async def rotate_key_through(db: Callable[..., Awaitable[Any]], store: Store, keys: KeyRing,
                             progress: Callable[[str], None] = lambda _m: None, *,
                             others: Callable[[], list[str]] = _nobody,
                             audit: AuditEntry | None = None) -> RotationReport:
    """`rotate_key`, its database calls made through `db` (a `storage.Database`), which may run one again;
    the key file's steps run here, on the caller's thread, once each (the wait for the writes that seal, too:
    a caller whose own tasks seal would wait for them while they cannot run). `audit` is stored with the
    rotation's first database write (see `_rotation`)."""
    steps = _rotation(store, keys, progress, others, audit)
    try:
        step = _advance(steps, True, None)
        while not isinstance(step, RotationReport):
            function, args = step
            try:
                ok, value = True, await db(function, *args)
            except Exception as exc:
                ok, value = False, exc
            step = _advance(steps, ok, value)
        return step
    finally:
        steps.close()  # cancelled midway: the key file's lock is let go here, not when collected
