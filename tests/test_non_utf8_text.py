"""Text that is not valid UTF-8 is refused before anything is stored, in one line naming what the person
gave. Python makes each undecodable byte of a command-line argument a lone surrogate (`caf\\xe9`, a
Latin-1 é, becomes 'caf\\udce9'); no database column can store one: `squall key set/get` crashed with
the driver's UnicodeEncodeError, and `squall run core.echo message=...` named `cmd`, the parameter
rendered from the `message` the person gave."""
from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.config import SYSTEM_PACKS_PATH
from engine.crypto import KeyRing
from engine.datastore import Datastore, DatastoreError, check_prefix
from engine.packs import Registry, load_registry
from engine.parameters import ParameterError, resolve
from engine.storage import Store
from tests.test_cli import SQUALL

LATIN1 = os.fsdecode(b"caf\xe9")  # what Python makes of a Latin-1 "café" on a UTF-8 command line


@pytest.fixture
def ds(tmp_path: Path) -> Iterator[Datastore]:
    store = Store.open(f"sqlite:///{tmp_path / 'squall.db'}")
    try:
        yield Datastore(store, KeyRing(tmp_path / "datastore.key"))
    finally:
        store.close()


def test_the_command_line_gives_a_lone_surrogate() -> None:
    assert LATIN1 == "caf\udce9"


@pytest.mark.parametrize(("name", "value", "description", "field"),
                         [(LATIN1, "v", None, "name"), ("note", LATIN1, None, "value"),
                          ("note", "v", LATIN1, "description")])
def test_a_key_with_text_that_is_not_utf8_is_refused(ds: Datastore, name: str, value: str,
                                                     description: str | None, field: str) -> None:
    with pytest.raises(DatastoreError) as caught:
        ds.set(name, value, description=description)
    message = str(caught.value)
    assert caught.value.field == field
    assert f"its {field} is not valid UTF-8 text: position 4" in message
    assert "\n" not in message
    message.encode("utf-8")  # the message itself can be written anywhere
    assert ds.list() == []
    with pytest.raises(DatastoreError):
        ds.check_write(name, value, description=description)


def test_reading_and_deleting_a_key_named_so_is_refused(ds: Datastore) -> None:
    for call in (ds.get, ds.delete):
        with pytest.raises(DatastoreError) as caught:
            call(LATIN1)
        assert str(caught.value).startswith("key 'caf\\udce9': its name is not valid UTF-8 text")
    with pytest.raises(DatastoreError, match="the prefix is not valid UTF-8 text"):
        check_prefix(LATIN1)


def squall(home: Path, *args: str | bytes) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SQUALL), *args], capture_output=True, text=True, errors="backslashreplace",
                          timeout=120, cwd=home)


@pytest.mark.parametrize(("args", "named"), [(("key", "set", b"caf\xe9", "v"), "key 'caf\\udce9': its name"),
                                             (("key", "set", "note", b"caf\xe9"), "key 'note': its value"),
                                             (("key", "get", b"caf\xe9"), "key 'caf\\udce9': its name")])
def test_the_key_commands_refuse_arguments_that_are_not_utf8(tmp_path: Path, args: tuple[str | bytes, ...],
                                                             named: str) -> None:
    done = squall(tmp_path, *args)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip() == done.stderr.strip().splitlines()[0]
    assert f"{named} is not valid UTF-8 text" in done.stderr


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    return load_registry([], tmp_path_factory.mktemp("configs"), SYSTEM_PACKS_PATH)


def test_the_parameter_given_is_named_not_the_one_rendered_from_it(registry: Registry) -> None:
    with pytest.raises(ParameterError) as caught:
        resolve(registry.action("core.echo"), {"message": LATIN1}, {})
    assert str(caught.value).startswith('parameter "message" is not valid UTF-8 text')


def test_run_names_the_parameter_given(tmp_path: Path) -> None:
    done = squall(tmp_path, "run", "core.echo", b"message=caf\xe9")
    assert done.returncode == 2, done.stderr
    assert 'parameter "message" is not valid UTF-8 text' in done.stderr
    assert '"cmd"' not in done.stderr


def test_an_api_key_name_that_is_not_utf8_is_refused_in_one_line(tmp_path: Path) -> None:
    """`squall apikey create $'caf\\xe9'`: the name is refused before anything is stored (was a SQLAlchemy
    UnicodeEncodeError traceback)."""
    done = squall(tmp_path, "apikey", "create", b"caf\xe9")
    assert done.returncode == 2, done.stderr
    assert "the API key's name is not valid UTF-8 text" in done.stderr and "Traceback" not in done.stderr
