"""Encryption at rest: AES-256-GCM under one key file created with mode 0600 on first use.

Secret action parameters are sealed with it while an execution waits to run, and encrypted
datastore values use it too, so a copied database file discloses no secret without the key.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import uuid
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_VERSION = b"\x01"


class CryptoError(Exception):
    """A key file or ciphertext that cannot be used; the message says which and why."""


class KeyRing:
    """The symmetric key, loaded from (or created at) one path."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._aead: AESGCM | None = None

    def _create(self) -> None:
        """Write a new key atomically: a reader never sees half a file, and of several processes
        (or threads) creating it at once exactly one wins and all use its key."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        key = AESGCM.generate_key(bit_length=256)
        document = json.dumps({"version": 1, "aes256_gcm": base64.urlsafe_b64encode(key).decode()})
        temporary = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(document)
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.suppress(FileExistsError):  # another process created it first: use theirs
                os.link(temporary, self.path)
        finally:
            temporary.unlink(missing_ok=True)

    def _load(self, *, create: bool = True) -> AESGCM:
        if self._aead is not None:
            return self._aead
        if not self.path.exists():
            if not create:
                raise CryptoError(
                    f"encryption key file {self.path} does not exist, so nothing sealed under a key can be "
                    "decrypted; restore the key file (or fix datastore.encryption_key_path)"
                )
            self._create()
        try:
            document = json.loads(self.path.read_text())
            key = base64.urlsafe_b64decode(document["aes256_gcm"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CryptoError(
                f"encryption key file {self.path} is unreadable or malformed ({exc}); expected JSON "
                '{"version": 1, "aes256_gcm": "<base64 of 32 bytes>"}'
            ) from exc
        if len(key) != 32:
            raise CryptoError(f"encryption key file {self.path} holds {len(key)} bytes; AES-256 needs 32")
        self._aead = AESGCM(key)
        return self._aead

    def encrypt(self, plaintext: str) -> str:
        nonce = os.urandom(12)
        sealed = self._load().encrypt(nonce, plaintext.encode("utf-8"), None)
        return base64.urlsafe_b64encode(_VERSION + nonce + sealed).decode("ascii")

    def decrypt(self, token: str) -> str:
        try:
            raw = base64.urlsafe_b64decode(token.encode("ascii"))
            if raw[:1] != _VERSION or len(raw) < 29:
                raise ValueError("unknown format")
            return self._load(create=False).decrypt(raw[1:13], raw[13:], None).decode("utf-8")
        except CryptoError:
            raise
        except (InvalidTag, ValueError, UnicodeError) as exc:
            raise CryptoError(
                f"ciphertext cannot be decrypted with the key in {self.path} (corrupted, or sealed "
                "under another key)"
            ) from exc
