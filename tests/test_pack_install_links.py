"""`squall pack install` and symlinks in the pack: a link to a file outside the pack (someone else's
repository pointing at /etc/shadow or ~/.ssh) must not make the installing host copy that file into
the packs folder, where actions and the README would serve it; a dangling link is said, not a
traceback; a link between the pack's own files is kept as a link, so the loader's check still applies.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from engine.pack_manager import _LINKS_NAMED, PackInstallError
from tests.test_pack_install import install, pack_source


def _files_under(folder: Path) -> list[Path]:
    return [Path(here, name) for here, _, names in os.walk(folder) for name in names] if folder.exists() else []


@pytest.mark.parametrize("link", ["actions/leak.py", "README.md"])
@pytest.mark.parametrize("absolute", [True, False])
def test_a_link_to_a_file_outside_the_pack_is_refused_and_never_copied(tmp_path: Path, link: str,
                                                                       absolute: bool) -> None:
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("OUTSIDE-SECRET-CONTENT\n")
    source = pack_source(tmp_path / "src" / "demo", "demo", "1.0.0")
    (source / link).symlink_to(secret if absolute else os.path.relpath(secret, (source / link).parent))

    with pytest.raises(PackInstallError) as caught:
        install(source, tmp_path)

    message = str(caught.value)
    assert link in message and os.readlink(source / link) in message and "outside the pack" in message
    assert "file itself" in message
    assert not (tmp_path / "packs" / "demo").exists() and not (tmp_path / "venvs").exists()
    leaked = [file for file in _files_under(tmp_path / "packs")
              if not file.is_symlink() and "OUTSIDE-SECRET" in file.read_text(errors="replace")]
    assert leaked == []


def test_a_link_to_a_folder_outside_the_pack_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outdir"
    outside.mkdir()
    (outside / "secret.txt").write_text("OUTDIR-SECRET\n")
    source = pack_source(tmp_path / "src" / "demo", "demo", "1.0.0")
    (source / "outdir").symlink_to(outside)

    with pytest.raises(PackInstallError, match=r"outdir is a symlink to .*outside the pack"):
        install(source, tmp_path)

    assert not (tmp_path / "packs" / "demo").exists()


def test_a_dependency_with_an_outside_link_is_refused_before_anything_is_installed(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("OUTSIDE-SECRET-CONTENT\n")
    base = pack_source(tmp_path / "src" / "base", "base", "1.0.0")
    (base / "README.md").symlink_to(secret)
    app = pack_source(tmp_path / "src" / "app", "app", "1.0.0", dependencies=[str(base)])

    with pytest.raises(PackInstallError, match=r"README\.md is a symlink"):
        install(app, tmp_path)

    assert not (tmp_path / "packs" / "base").exists() and not (tmp_path / "packs" / "app").exists()


def test_a_dangling_link_is_said_clearly(tmp_path: Path) -> None:
    source = pack_source(tmp_path / "src" / "demo", "demo", "1.0.0")
    (source / "README.md").symlink_to(tmp_path / "nonexistent" / "file")

    with pytest.raises(PackInstallError) as caught:
        install(source, tmp_path)

    message = str(caught.value)
    assert "README.md" in message and str(tmp_path / "nonexistent" / "file") in message
    assert "points to nothing" in message and "Traceback" not in message
    assert not (tmp_path / "packs" / "demo").exists()


def test_a_link_to_a_file_of_the_pack_is_installed_as_a_link(tmp_path: Path) -> None:
    source = pack_source(tmp_path / "src" / "demo", "demo", "1.0.0")
    (source / "docs").mkdir()
    (source / "docs" / "guide.md").write_text("the guide\n")
    (source / "README.md").symlink_to(Path("docs") / "guide.md")
    (source / "actions" / "hi.yaml").symlink_to("hello.yaml")

    pack, _ = install(source, tmp_path)

    installed = tmp_path / "packs" / "demo"
    assert pack.ref == "demo"
    assert (installed / "README.md").is_symlink() and (installed / "README.md").read_text() == "the guide\n"
    assert (installed / "actions" / "hi.yaml").is_symlink()
    assert (installed / "actions" / "hi.yaml").resolve().is_relative_to(installed.resolve())


@pytest.mark.parametrize("how", ["absolute", "round trip"])
def test_a_link_into_the_pack_that_would_point_outside_the_copy_is_refused(tmp_path: Path, how: str) -> None:
    source = pack_source(tmp_path / "src" / "demo", "demo", "1.0.0")
    inside = source / "actions" / "hello.yaml"
    (source / "README.md").symlink_to(inside if how == "absolute" else Path("..", "demo", "actions", "hello.yaml"))

    with pytest.raises(PackInstallError, match=r"README\.md is a symlink"):
        install(source, tmp_path)

    assert not (tmp_path / "packs" / "demo").exists()


def test_a_file_the_copy_cannot_take_is_named_not_a_traceback(tmp_path: Path) -> None:
    # A named pipe stands for any file copytree fails on (shutil.Error): the install says which one.
    source = pack_source(tmp_path / "src" / "demo", "demo", "1.0.0")
    os.mkfifo(source / "actions" / "pipe")

    with pytest.raises(PackInstallError) as caught:
        install(source, tmp_path)

    message = str(caught.value)
    assert str(source / "actions" / "pipe") in message and "demo was not installed" in message
    assert not (tmp_path / "packs" / "demo").exists() and not (tmp_path / "packs" / ".demo.installing").exists()


def test_every_refused_link_is_named_in_one_error_sorted_by_path(tmp_path: Path) -> None:
    # One of each kind, in several folders and created out of order: a fix-one-retry-meet-the-next
    # loop is what naming them all avoids.
    secret = tmp_path / "secret.txt"
    secret.write_text("OUTSIDE-SECRET-CONTENT\n")
    source = pack_source(tmp_path / "src" / "demo", "demo", "1.0.0")
    (source / "docs").mkdir()
    links = {
        source / "docs" / "zz.md": (secret, "outside the pack"),
        source / "actions" / "leak.py": (Path(os.path.relpath(secret, source / "actions")), "outside the pack"),
        source / "README.md": (tmp_path / "nonexistent" / "file", "points to nothing"),
        source / "docs" / "abs.md": (source / "actions" / "hello.yaml", "is absolute"),
        source / "docs" / "round.md": (Path("..", "..", "demo", "actions", "hello.yaml"), "leaves the pack"),
    }
    for link, (target, _) in links.items():
        link.symlink_to(target)

    with pytest.raises(PackInstallError) as caught:
        install(source, tmp_path)

    message = str(caught.value)
    named = sorted(link.relative_to(source) for link in links)
    said = [message.index(f"{path} is a symlink to {os.readlink(source / path)}, which") for path in named]
    assert said == sorted(said)
    for path in named:
        start = message.index(f"{path} is a symlink to")
        assert links[source / path][1] in message[start:].split("; ")[0]
    assert f"{len(links)} symlinks" in message and "each link" in message and not re.search(r"and \d+ more", message)
    assert "file itself" in message and "Nothing was installed" in message
    assert not (tmp_path / "packs" / "demo").exists() and not (tmp_path / "venvs").exists()


def test_a_pack_with_very_many_refused_links_names_the_first_and_counts_the_rest(tmp_path: Path) -> None:
    source = pack_source(tmp_path / "src" / "demo", "demo", "1.0.0")
    (source / "many").mkdir()
    total = _LINKS_NAMED + 7
    names = [f"link{number:03d}" for number in range(total)]
    for name in reversed(names):
        (source / "many" / name).symlink_to(tmp_path / "nowhere" / name)

    with pytest.raises(PackInstallError) as caught:
        install(source, tmp_path)

    message = str(caught.value)
    shown = [name for name in names if f"{Path('many', name)} is a symlink" in message]
    assert shown == names[:_LINKS_NAMED]
    assert f"{total} symlinks" in message and f"and {total - _LINKS_NAMED} more" in message
    assert not (tmp_path / "packs" / "demo").exists()
