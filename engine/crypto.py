"""Encryption at rest: AES-256-GCM under a key file created with mode 0600 on first use.

Secret action parameters are sealed with it while an execution waits to run, and encrypted
datastore values use it too, so a copied database file discloses no secret without the key.

The file is a small key ring: the first key encrypts, every key listed can decrypt, and each
ciphertext names the key that sealed it. That is what makes `squall key rotate` safe: the new key
is added before anything is re-encrypted and the old one is dropped only after every secret was
re-encrypted, so a crash at any point leaves every secret readable.

Another process may rotate the ring while this one runs (`squall key rotate` beside `squall serve`),
so a `KeyRing` does not trust its copy of the file: before it encrypts it looks whether the file
changed (one `os.stat`), so it never seals under a key the file no longer holds, and a ciphertext
naming a key it does not know makes it read the file again before it gives up. Decrypting under a
known key costs no system call. The rotation itself keeps the old keys while another Squall process
runs (`engine.datastore.rotate_key`): such a process may hold ciphertext it sealed a moment earlier.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_V1 = b"\x01"  # version byte, 12-byte nonce, ciphertext+tag (one key; before key rings)
_V2 = b"\x02"  # version byte, 4-byte key id, 12-byte nonce, ciphertext+tag
_FORMAT = '{"version": 2, "keys": [{"id": "<8 hex digits>", "aes256_gcm": "<base64 of 32 bytes>"}]}'


class CryptoError(Exception):
    """A key file or ciphertext that cannot be used; the message says which and why."""


class NotEncrypted(CryptoError):
    """The value to decrypt is no ciphertext at all: a plain value (a key stored without encryption)."""


#: What a `KeyRing` knows of its file when it read it: device, inode, size, modification time. A rotation
#: replaces the file (a new inode), so a changed one is seen even within one tick of the clock.
_Signature = tuple[int, int, int, int]


def _key_id(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()[:4]


class KeyRing:
    """The symmetric keys, loaded from (or created at) one path."""

    def __init__(self, path: Path) -> None:
        self.path = path
        #: The keys as read, with the file's signature then (one attribute: threads never see half of it).
        self._loaded: tuple[_Signature | None, list[tuple[bytes, AESGCM]]] | None = None

    # -- the file ------------------------------------------------------------------------
    @staticmethod
    def _document(keys: list[bytes]) -> str:
        return json.dumps({"version": 2, "keys": [
            {"id": _key_id(k).hex(), "aes256_gcm": base64.urlsafe_b64encode(k).decode()} for k in keys
        ]})

    def _write(self, keys: list[bytes], *, replace: bool) -> None:
        """Write the ring atomically: a reader never sees half a file. Without `replace`, of several
        processes (or threads) creating it at once exactly one wins and all use its key."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(self._document(keys))
                handle.flush()
                os.fsync(handle.fileno())
            if replace:
                os.replace(temporary, self.path)
            else:
                with contextlib.suppress(FileExistsError):  # another process created it first: use theirs
                    os.link(temporary, self.path)
        finally:
            temporary.unlink(missing_ok=True)
        self._loaded = None

    def _read(self) -> list[bytes]:
        try:
            document = json.loads(self.path.read_text())
            if document.get("version") == 1:
                entries = [document["aes256_gcm"]]
            else:
                entries = [entry["aes256_gcm"] for entry in document["keys"]]
            keys = [base64.urlsafe_b64decode(entry) for entry in entries]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CryptoError(
                f"encryption key file {self.path} is unreadable or malformed ({exc}); expected JSON {_FORMAT}"
            ) from exc
        if not keys:
            raise CryptoError(f"encryption key file {self.path} holds no key; expected JSON {_FORMAT}")
        for key in keys:
            if len(key) != 32:
                raise CryptoError(f"encryption key file {self.path} holds a {len(key)}-byte key; AES-256 needs 32")
        return keys

    def _signature(self) -> _Signature | None:
        """The key file's signature now; None if there is no file."""
        try:
            status = os.stat(self.path)
        except FileNotFoundError:
            return None
        return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns

    def _load(self, *, create: bool = True, fresh: bool = False) -> list[tuple[bytes, AESGCM]]:
        """The keys, current key first: read once, and read again when `fresh` asks and the file changed
        since (another process rotated them). The file is made on first use only if `create` and this
        ring never read one: a file removed under a running process is not replaced by a new key."""
        # Imported on first use: reading a plain key (`squall key get`) never pays for it.
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        loaded = self._loaded
        if loaded is not None and not fresh:
            return loaded[1]
        signature = self._signature()  # taken before reading: a change made meanwhile is seen next time
        if loaded is not None and signature == loaded[0]:
            return loaded[1]
        if signature is None:
            self._refuse_missing(create=create, loaded=loaded is not None)
            self._write([AESGCM.generate_key(bit_length=256)], replace=False)
            signature = self._signature()
        keys = [(_key_id(key), AESGCM(key)) for key in self._read()]
        self._loaded = (signature, keys)
        return keys

    def _refuse_missing(self, *, create: bool, loaded: bool) -> None:
        """A CryptoError for a key file that is not there, unless this ring may make it (`create`)."""
        if loaded:
            raise CryptoError(
                f"encryption key file {self.path} was removed after this process read it: restore it from a "
                "backup (every secret sealed so far needs its keys); nothing is sealed under keys that only "
                "this process's memory holds, which would be lost when it stops"
            )
        if not create:
            raise CryptoError(
                f"encryption key file {self.path} does not exist, so nothing sealed under a key can be "
                "decrypted; restore the key file (or fix datastore.encryption_key_path)"
            )

    # -- rotation ------------------------------------------------------------------------
    def add_key(self) -> str:
        """Put a new key first (it encrypts from now on); the old ones still decrypt."""
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        keys = self._read() if self.path.exists() else []
        new = AESGCM.generate_key(bit_length=256)
        self._write([new, *keys], replace=True)
        return _key_id(new).hex()

    def retire_old_keys(self) -> int:
        """Keep only the current key; call once nothing is sealed under the others."""
        keys = self._read()
        self._write(keys[:1], replace=True)
        return len(keys) - 1

    @property
    def current_key_id(self) -> str:
        """The key that encrypts now (the file's first, as it is now)."""
        return self._load(fresh=True)[0][0].hex()

    def key_id_of(self, token: str) -> str | None:
        """Which key sealed `token` (None for the single-key format, which names none)."""
        raw = base64.urlsafe_b64decode(token.encode("ascii"))
        return raw[1:5].hex() if raw[:1] == _V2 else None

    def _parse(self, token: str) -> tuple[bytes | None, bytes, bytes]:
        """The key id (None: the single-key format), nonce and sealed body of `token`; NotEncrypted when
        it is no ciphertext of this format at all (not base64, no version byte, too short)."""
        try:
            raw = base64.urlsafe_b64decode(token.encode("ascii"))
        except (ValueError, UnicodeError):
            raw = b""
        if raw[:1] == _V2 and len(raw) >= 33:
            return raw[1:5], raw[5:17], raw[17:]
        if raw[:1] == _V1 and len(raw) >= 29:
            return None, raw[1:13], raw[13:]
        raise NotEncrypted(
            f"the value is not encrypted: it is no ciphertext sealed with the keys in {self.path} (a key "
            "stored without encryption holds its plain value)"
        )

    # -- sealing -------------------------------------------------------------------------
    def encrypt(self, plaintext: str) -> str:
        """Seal under the current key, as the file holds it now: never under one a rotation retired."""
        key_id, aead = self._load(fresh=True)[0]
        nonce = os.urandom(12)
        sealed = aead.encrypt(nonce, plaintext.encode("utf-8"), None)
        return base64.urlsafe_b64encode(_V2 + key_id + nonce + sealed).decode("ascii")

    def _candidates(self, key_id: bytes | None) -> list[AESGCM]:
        """The keys that may have sealed a ciphertext naming `key_id` (every key for the single-key
        format); a key this ring does not know makes it read the file again, as another process may
        have rotated it."""
        keys = self._load(create=False)
        if key_id is None:
            return [aead for _, aead in keys]
        found = [aead for known, aead in keys if known == key_id]
        if not found:
            found = [aead for known, aead in self._load(create=False, fresh=True) if known == key_id]
        if not found:
            raise CryptoError(
                f"ciphertext was sealed under key {key_id.hex()}, which {self.path} no longer holds "
                "(was the key file replaced?)"
            )
        return found

    def decrypt(self, token: str) -> str:
        from cryptography.exceptions import InvalidTag

        key_id, nonce, body = self._parse(token)
        for aead in self._candidates(key_id):
            with contextlib.suppress(InvalidTag, UnicodeError):
                return aead.decrypt(nonce, body, None).decode("utf-8")
        raise CryptoError(
            f"ciphertext cannot be decrypted with the key in {self.path} (corrupted, or sealed "
            "under another key)"
        )
