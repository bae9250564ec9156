"""Encryption at rest: AES-256-GCM under a key file created with mode 0600 on first use.

Secret action parameters are sealed with it while an execution waits to run, and encrypted
datastore values use it too, so a copied database file discloses no secret without the key.

The file is a small key ring: the first key encrypts, every key listed can decrypt, and each
ciphertext names the key that sealed it. That is what makes `squall key rotate` safe: the new key
is added before anything is re-encrypted and the old one is dropped only after every secret was
re-encrypted, so a crash at any point leaves every secret readable.

Every change to the file (the first key made, a key added, old keys retired) is made under an
exclusive `flock` on a lock file beside it (`<key file>.lock`), and a rotation holds that lock from
its first step to its last: two rotations at once each added a key and then kept only the file's
first, the other's, so the key every secret had just been sealed under went and all were lost. A
second rotation is refused at once, naming the first. The first key is made only for a database
that holds nothing sealed (`KeyRing.sealed_without_key`): a key file missing beside secrets is
restored from a backup, never replaced by a new key (what it sealed would be lost on the restore).

Another process may rotate the ring while this one runs (`squall key rotate` beside `squall serve`),
so a `KeyRing` does not trust its copy of the file: before it encrypts it looks whether the file
changed (one `os.stat`), so it never seals under a key the file no longer holds, and a ciphertext
naming a key it does not know makes it read the file again before it gives up. Decrypting under a
known key costs no system call. The rotation itself keeps the old keys while another Squall process
runs (`engine.datastore.rotate_key`): such a process may hold ciphertext it sealed a moment earlier.

A write that seals a value and stores it (`squall key set --encrypt`, `squall key load`) holds a shared
`flock` on a second lock file (`<key file>.seal.lock`, `KeyRing.sealing`) from before it encrypts until
its transaction commits, and a rotation takes that lock exclusively for a moment once its new key is in
the file (`KeyRing.wait_for_sealing`). Such a write sealed under the old key and stored the ciphertext
just after the rotation had read the secrets, and the rotation then retired the key it was sealed
under: that value was lost. Now every write that may have chosen the old key has committed before the
rotation reads anything, and every write after that finds the new key in the file.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from engine.files import write_atomically

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_V1 = b"\x01"  # version byte, 12-byte nonce, ciphertext+tag (one key; before key rings)
_V2 = b"\x02"  # version byte, 4-byte key id, 12-byte nonce, ciphertext+tag
_FORMAT = '{"version": 2, "keys": [{"id": "<8 hex digits>", "aes256_gcm": "<base64 of 32 bytes>"}]}'

log = logging.getLogger(__name__)


class CryptoError(Exception):
    """A key file or ciphertext that cannot be used; the message says which and why."""


class NotEncrypted(CryptoError):
    """The value to decrypt is no ciphertext at all: a plain value (a key stored without encryption)."""


class RotationUnderWay(CryptoError):
    """Another process rotates the keys of this file now; the message names it."""


#: What a `KeyRing` knows of its file when it read it: device, inode, size, modification time. A rotation
#: replaces the file (a new inode), so a changed one is seen even within one tick of the clock.
_Signature = tuple[int, int, int, int]


def _key_id(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()[:4]


#: Why a lock file that is not there cannot be made: a read-only mount, a folder this user may not write.
_UNWRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})

#: What the lock file says while a rotation holds it (`<pid> rotation`); a short write says `<pid> write`.
_ROTATION, _WRITE = "rotation", "write"


class _KeyFileLock:
    """The exclusive `flock` on the lock file beside one key file, as this process holds it.

    One per key file in the process, shared by its every `KeyRing`: `flock` belongs to an open file, so a
    second open of the lock file in the same process (a rotation's own `add_key`) would wait on itself.
    Held again by the thread that holds it, it only counts; another thread of the process waits."""

    _all: dict[str, _KeyFileLock] = {}
    _all_guard = threading.Lock()

    def __init__(self, path: Path) -> None:
        self.path = path
        self._threads = threading.RLock()
        self._depth = 0

    @classmethod
    def of(cls, key_file: Path) -> _KeyFileLock:
        lock_file = os.path.abspath(f"{key_file}.lock")
        with cls._all_guard:
            return cls._all.setdefault(lock_file, cls(Path(lock_file)))

    @contextlib.contextmanager
    def hold(self, doing: str) -> Iterator[None]:
        """Hold the lock for `doing` (`_ROTATION`, `_WRITE`). A rotation finding another rotation under way
        is refused at once (RotationUnderWay); anything else waits for the lock, which a write holds for a
        moment (a rotation only waits here for a write or a holder that has not said yet what it does)."""
        with self._threads:
            fd = self._acquire(doing) if self._depth == 0 else None
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, 0)  # a later holder is never named after this one
                    os.close(fd)  # releases the flock

    def _acquire(self, doing: str) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise CryptoError(f"cannot open the key file's lock file {self.path} ({exc}); its folder must be "
                              "writable by the user running Squall") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._refuse_or_wait(fd, doing)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {doing}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _refuse_or_wait(self, fd: int, doing: str) -> None:
        holder = os.pread(fd, 64, 0).decode("ascii", "replace").split()
        if doing == _ROTATION and holder[1:] == [_ROTATION]:
            raise RotationUnderWay(f"another key rotation is under way (pid {holder[0]}); try again when it ends")
        fcntl.flock(fd, fcntl.LOCK_EX)


class _SealLock:
    """The shared `flock` on `<key file>.seal.lock` that writes storing a sealed value hold from before they
    encrypt until they commit (`KeyRing.sealing`), and that a rotation takes exclusively for a moment once
    its new key is in the file (`KeyRing.wait_for_sealing`): then no write that may have sealed under the old
    key is still to commit, and every later one reads the new key from the file.

    Not the key file's lock (`_KeyFileLock`): a rotation holds that one from its first step to its last,
    re-encrypting every secret meanwhile, and a seal waiting on it would stall for as long; on this one a
    seal waits only while a rotation takes it, which it lets go at once. Nor a check made after retiring,
    for ciphertexts under the retired keys: a write may commit after any such check.

    One per key file in the process, shared by its threads and tasks: the first holder takes the `flock`
    (on a file kept open) and the last lets it go, so a seal pays one `flock` call to take it and one to
    let it go, and a write that seals nothing pays none."""

    _all: dict[str, _SealLock] = {}
    _all_guard = threading.Lock()
    #: Whether this process has said that it seals without the lock (`_say_unlocked`): once is enough.
    _warned = False

    def __init__(self, path: Path) -> None:
        self.path = path
        self._guard = threading.Lock()
        self._holders = 0
        self._fd: int | None = None

    @classmethod
    def of(cls, key_file: Path) -> _SealLock:
        lock_file = os.path.abspath(f"{key_file}.seal.lock")
        with cls._all_guard:
            return cls._all.setdefault(lock_file, cls(Path(lock_file)))

    @classmethod
    def forget_inherited(cls) -> None:
        """In a forked child: the parent's open lock files are the parent's (closing the child's copies leaves
        the parent's `flock` as it is; unlocking one would have let it go), and so are their guards' states."""
        cls._all_guard = threading.Lock()
        for lock in cls._all.values():
            if lock._fd is not None:
                with contextlib.suppress(OSError):
                    os.close(lock._fd)
            lock._guard, lock._holders, lock._fd = threading.Lock(), 0, None

    def _create(self) -> int:
        """The lock file opened to write, made if it is not there."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)

    def _open(self) -> int:
        """The lock file as a rotation opens it (`_create`): it writes the key file, so it can make this one."""
        try:
            return self._create()
        except OSError as exc:
            raise CryptoError(f"cannot open the key file's lock file {self.path} ({exc}); its folder must be "
                              "writable by the user running Squall") from exc

    def _open_to_share(self) -> int | None:
        """The lock file opened for a seal's shared `flock` (`shared`). Where it cannot be opened to write (a
        key file on a read-only mount, as a Kubernetes secret volume holds it) it is opened to read: `flock`
        needs no more. Where it is not there and cannot be made (EROFS, EACCES), None: a rotation replaces
        the key file and makes `<key file>.lock` in that folder, so none runs where this process cannot
        write, and a seal there has no rotation to wait for (said once per process, `_say_unlocked`)."""
        try:
            return self._create()
        except OSError as exc:
            refused = exc
        try:
            return os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            if refused.errno not in _UNWRITABLE:
                raise self._unopenable(refused) from refused
        except OSError as exc:
            raise self._unopenable(exc) from exc
        self._say_unlocked(refused)
        return None

    def _unopenable(self, exc: OSError) -> CryptoError:
        return CryptoError(f"cannot open the key file's lock file {self.path} ({exc}); it must be readable by "
                           "the user running Squall, or its folder writable so that it can be made")

    def _say_unlocked(self, exc: OSError) -> None:
        """Warn, once per process, that seals go on without the lock beside a key file in a read-only folder."""
        with _SealLock._all_guard:
            if _SealLock._warned:
                return
            _SealLock._warned = True
        log.warning("the key file's folder is read-only for this process (%s), so its lock file %s cannot be "
                    "made: secrets are sealed without it. No key rotation can run there (it rewrites the key "
                    "file), so there is none to wait for", exc.strerror, self.path)

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._guard:
            if self._holders == 0:
                if self._fd is None:
                    self._fd = self._open_to_share()  # None: a read-only folder, where no rotation runs
                if self._fd is not None:
                    fcntl.flock(self._fd, fcntl.LOCK_SH)  # waits only while a rotation takes it, a moment
            self._holders += 1
        try:
            yield
        finally:
            with self._guard:
                self._holders -= 1
                if self._holders == 0 and self._fd is not None:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)

    def wait_for_holders(self, waiting: Callable[[], None]) -> None:
        """Take the lock exclusively and let it go: every holder of it now has ended. `waiting` is called
        first if one holds it. Never called inside `shared` on the same thread: it would wait for itself."""
        fd = self._open()
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                waiting()
                fcntl.flock(fd, fcntl.LOCK_EX)
        finally:
            os.close(fd)  # lets the flock go


os.register_at_fork(after_in_child=_SealLock.forget_inherited)


class KeyRing:
    """The symmetric keys, loaded from (or created at) one path."""

    def __init__(self, path: Path, sealed_without_key: Callable[[], str | None] | None = None) -> None:
        self.path = path
        #: The keys as read, with the file's signature then (one attribute: threads never see half of it).
        self._loaded: tuple[_Signature | None, list[tuple[bytes, AESGCM]]] | None = None
        #: Asked before a first key is made, with no key file there: one value the database holds sealed
        #: (named), or None when it holds none. The datastore sets it (`engine.datastore.Datastore`): a
        #: key made beside sealed values would read none of them, and what it sealed would be lost again
        #: once the operator restored the key file. None: nothing to ask (a ring with no database).
        self.sealed_without_key = sealed_without_key

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
        # Not `replace`: if another process created it first, its ring stands and is the one read next.
        write_atomically(self.path, self._document(keys).encode(), exclusive=not replace)
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
            with _KeyFileLock.of(self.path).hold(_WRITE):
                if self._signature() is None:  # not made meanwhile by a process this one waited for
                    self._refuse_sealed()
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

    def _refuse_sealed(self) -> None:
        """A CryptoError when the database holds sealed values though there is no key file to read them."""
        sealed = self.sealed_without_key() if self.sealed_without_key is not None else None
        if sealed is not None:
            raise CryptoError(
                f"encryption key file {self.path} does not exist, but the database holds values sealed under "
                f"its keys ({sealed}, and maybe more): restore it from a backup (or fix "
                "datastore.encryption_key_path). No new key is made: it would read none of them, and what it "
                "sealed would be lost once the key file is restored"
            )

    # -- rotation ------------------------------------------------------------------------
    def rotating(self) -> contextlib.AbstractContextManager[None]:
        """Hold the key file's lock for a whole rotation (`engine.datastore.rotate_key`): RotationUnderWay
        at once when another process rotates. The ring's own writes inside take the lock again freely."""
        return _KeyFileLock.of(self.path).hold(_ROTATION)

    def sealing(self) -> contextlib.AbstractContextManager[None]:
        """Hold around a write that seals a value and stores it, from before it encrypts until its transaction
        has committed (an awaited `storage.Database` call has): a rotation waits for it before it reads the
        secrets (`wait_for_sealing`), so a value sealed under the old key is re-encrypted with the rest rather
        than stored after the rotation read them, under a key it then retired. Writes of the same process may
        hold it at once; a rotation only waits while one does.

        The ring is read first, its first key made if there is none (under the key file's lock): inside, an
        encrypt never waits for the key file's lock, which a rotation waiting here holds."""
        self._load()
        return _SealLock.of(self.path).shared()

    def wait_for_sealing(self, waiting: Callable[[], None] = lambda: None) -> None:
        """Wait until every write holding `sealing` now, in any process, has committed (`waiting` is called
        first if one does). A rotation calls it once its new key is in the file: a write that chose the old
        key has stored its ciphertext by then, and every later one reads the new key."""
        _SealLock.of(self.path).wait_for_holders(waiting)

    def key_ids(self) -> list[str]:
        """The ids of the keys in the file now, the current one first ([] if there is no file)."""
        return [_key_id(key).hex() for key in self._read()] if self.path.exists() else []

    def add_key(self) -> str:
        """Put a new key first (it encrypts from now on); the old ones still decrypt."""
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        with _KeyFileLock.of(self.path).hold(_WRITE):
            if self.path.exists():
                keys = self._read()
            else:
                self._refuse_sealed()
                keys = []
            new = AESGCM.generate_key(bit_length=256)
            self._write([new, *keys], replace=True)
        return _key_id(new).hex()

    def retire_old_keys(self, keep: str | None = None, retire: Iterable[str] | None = None) -> int:
        """Drop the keys of `retire` (default: all but `keep`) and never `keep` (default: the file's first
        key now); returns how many went. A rotation names both: the key it sealed every secret under, and
        the keys the file held before it added that one, so a key it re-encrypted nothing away from stays.
        A file that no longer holds `keep` is left as it is (CryptoError)."""
        with _KeyFileLock.of(self.path).hold(_WRITE):
            keys = self._read()
            ids = [_key_id(key).hex() for key in keys]
            keep = ids[0] if keep is None else keep
            if keep not in ids:
                raise CryptoError(
                    f"encryption key file {self.path} no longer holds key {keep}, which the secrets were just "
                    f"re-encrypted under (it holds {', '.join(ids)}): was it replaced during the rotation? "
                    "nothing was retired; restore the key file that holds it"
                )
            going = (set(ids) if retire is None else set(retire)) - {keep}
            kept = [key for key, key_id in zip(keys, ids, strict=True) if key_id not in going]
            if len(kept) < len(keys):
                self._write(kept, replace=True)
        return len(keys) - len(kept)

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
