"""Encryption at rest: AES-256-GCM under a key file created with mode 0600 on first use.

Secret action parameters are sealed with it while an execution waits to run, and encrypted
datastore values use it too, so a copied database file discloses no secret without the key.

The file is a small key ring: the first key encrypts, every key listed can decrypt, and each
ciphertext names the key that sealed it. That is what makes `squall key rotate` safe: the new key
is added before anything is re-encrypted and the old one is dropped only after every secret was
re-encrypted, so a crash at any point leaves every secret readable.
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


def _key_id(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()[:4]


class KeyRing:
    """The symmetric keys, loaded from (or created at) one path."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._keys: list[tuple[bytes, AESGCM]] | None = None

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
        self._keys = None

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

    def _load(self, *, create: bool = True) -> list[tuple[bytes, AESGCM]]:
        # Imported on first use: reading a plain key (`squall key get`) never pays for it.
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if self._keys is not None:
            return self._keys
        if not self.path.exists():
            if not create:
                raise CryptoError(
                    f"encryption key file {self.path} does not exist, so nothing sealed under a key can be "
                    "decrypted; restore the key file (or fix datastore.encryption_key_path)"
                )
            self._write([AESGCM.generate_key(bit_length=256)], replace=False)
        self._keys = [(_key_id(key), AESGCM(key)) for key in self._read()]
        return self._keys

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
        return self._load()[0][0].hex()

    def key_id_of(self, token: str) -> str | None:
        """Which key sealed `token` (None for the single-key format, which names none)."""
        raw = base64.urlsafe_b64decode(token.encode("ascii"))
        return raw[1:5].hex() if raw[:1] == _V2 else None

    # -- sealing -------------------------------------------------------------------------
    def encrypt(self, plaintext: str) -> str:
        key_id, aead = self._load()[0]
        nonce = os.urandom(12)
        sealed = aead.encrypt(nonce, plaintext.encode("utf-8"), None)
        return base64.urlsafe_b64encode(_V2 + key_id + nonce + sealed).decode("ascii")

    def decrypt(self, token: str) -> str:
        from cryptography.exceptions import InvalidTag

        try:
            raw = base64.urlsafe_b64decode(token.encode("ascii"))
            keys = self._load(create=False)
            if raw[:1] == _V2 and len(raw) >= 33:
                candidates = [aead for key_id, aead in keys if key_id == raw[1:5]]
                nonce, body = raw[5:17], raw[17:]
                if not candidates:
                    raise CryptoError(
                        f"ciphertext was sealed under key {raw[1:5].hex()}, which {self.path} no longer holds "
                        "(was the key file replaced?)"
                    )
            elif raw[:1] == _V1 and len(raw) >= 29:
                candidates, nonce, body = [aead for _, aead in keys], raw[1:13], raw[13:]
            else:
                raise ValueError("unknown format")
            for aead in candidates:
                with contextlib.suppress(InvalidTag):
                    return aead.decrypt(nonce, body, None).decode("utf-8")
            raise InvalidTag()
        except CryptoError:
            raise
        except (InvalidTag, ValueError, UnicodeError) as exc:
            raise CryptoError(
                f"ciphertext cannot be decrypted with the key in {self.path} (corrupted, or sealed "
                "under another key)"
            ) from exc
