"""Installing and removing packs: fetch (copy or clone), install dependencies first, build the pack's
virtualenv, then put the pack and its virtualenv in place.

Long steps report progress through a callback, so the CLI and the web UI can show it. An install
interrupted at any point (a crash, SIGKILL) leaves the installed version working: the new copy is
built in a dot-folder (`.<ref>.installing`, which pack discovery skips) and its virtualenv beside the
live one (`<venv>.new`), and each is put in place by one rename once complete; the next install
clears what an interrupted one left. An install or removal holds the pack's lock (`.<ref>.lock`) from
start to end, so two of them (the CLI, chat and the web UI can each start one) run one after the other.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import errno
import fcntl
import importlib.metadata
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from engine import libc
from engine.config import SYSTEM_PACKS_PATH
from engine.packs import (
    PACK_REF,
    REPLACEABLE_PACKS,
    SYSTEM_PACKS,
    ContentWarning,
    Pack,
    Registry,
    _apply_defaults,
    discover,
    load_pack,
)
from engine.processes import dying_with_service
from engine.yamlfile import ContentError, ContentInvalid, load_yaml

Progress = Callable[[str], None]

#: How long one git command may take (a whole clone included) before it is stopped.
GIT_TIMEOUT = 300.0
#: Seconds without a step of pip's after which the install says that it is still at work.
HEARTBEAT = 10.0
#: What an install does not copy from the pack's folder: version control, byte code, and the
#: author's tool caches and virtualenvs (a checkout's `.venv` alone may be hundreds of megabytes;
#: the pack's own virtualenv is built from its requirements).
LEFT_BEHIND = shutil.ignore_patterns(".git", "__pycache__", "*.pyc", ".pytest_cache", ".mypy_cache", ".ruff_cache",
                                     ".tox", ".nox", ".venv", ".eggs")


class PackInstallError(Exception):
    """A pack that cannot be installed or removed; the message says why and what to do."""


# -- child processes ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _child(argv: list[str], **options: Any) -> Iterator[subprocess.Popen[bytes]]:
    """A child process (git, venv, pip) that does not outlive the install.

    It gets SIGKILL when the installing thread ends (`dying_with_service`, as actions' processes
    do), so a killed `squall pack install` takes its pip along instead of leaving it to write into a
    virtualenv nobody uses. It leads a session of its own: without a terminal, neither git nor ssh
    can ask anyone anything, and leaving this block early (an error, Ctrl-C, a timeout) kills its
    whole process group (pip's build processes too)."""
    argv, dying = dying_with_service(argv)
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True, **dying, **options) as process:
        try:
            yield process
        finally:
            if process.poll() is None:  # still ours: not reaped, so its pid names its group
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)


def _run(argv: list[str], timeout: float | None = None, **options: Any) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of a `_child`; `subprocess.TimeoutExpired` after `timeout` seconds."""
    with _child(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **options) as process:
        out, err = process.communicate(timeout=timeout)
        return process.returncode, out.decode(errors="replace"), err.decode(errors="replace")


# -- sources: folders and git repositories ------------------------------------------------------------

#: A version as `st2 pack install NAME=1.0.0` takes one (st2's PACK_VERSION_REGEX): its tag may be v1.0.0.
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")
#: git set so that it never waits for a person (as st2's clone_repo sets it): no terminal prompt, and an
#: askpass program that answers nothing.
_GIT_QUIET = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/echo"}
_CREDENTIALS = re.compile(r"Authentication failed|could not read (Username|Password)|terminal prompts disabled|"
                          r"Permission denied \(publickey|Host key verification failed")


@dataclass(frozen=True)
class _Source:
    """Where a pack comes from: a git URL or a folder, and the branch, tag or commit asked for."""

    location: str  #: the URL, or the folder's absolute path
    ref: str | None  #: what followed `=`, if anything
    clone: bool  #: cloned with git (a URL, a folder given with =ref, a folder named *.git), else copied


def _parse_source(text: str, base: Path | None = None) -> _Source:
    """`URL[=ref]` or `FOLDER[=ref]`, as `st2 pack install` takes them.

    The ref is what follows the first `=` after the repository part, so `URL=release/1.x` names a
    branch with a slash. A folder is the whole text if that is one, else the text before the first
    `=` that leaves a folder (`/path/to/repo=v1.0.0`); a relative one is relative to `base` (the
    folder of the pack whose dependency it is), else to the working folder."""
    if "://" in text or text.startswith("git@"):
        at = text.find("=", text.find("://") + 3 if "://" in text else 0)
        return _checked(_Source(text, None, True) if at < 0 else _Source(text[:at], text[at + 1:], True), text)
    for at in [len(text), *(index for index, char in enumerate(text) if char == "=" and index)]:
        folder = Path(text[:at]).expanduser()
        folder = (base / folder if base is not None else folder).resolve()
        if folder.is_dir():
            ref = text[at + 1:] if at < len(text) else None
            return _checked(_Source(str(folder), ref, ref is not None or folder.suffix == ".git"), text)
    raise PackInstallError(f"{text} is neither a folder nor a git URL (a URL has :// or is git@host:path; "
                           f"add =REF for a branch, tag or commit)")


def _checked(source: _Source, text: str) -> _Source:
    if source.ref is not None and (not source.ref or source.ref.startswith("-")):
        raise PackInstallError(f"{text}: {source.ref!r} after '=' is not a branch, tag or commit; give one "
                               f"(URL=v1.0.0, URL=main), or leave '=' out for the repository's default branch")
    return source


def _git(*args: str, what: str) -> tuple[int, str, str]:
    """Run git without a terminal, a prompt or stdin, stopped after `GIT_TIMEOUT` seconds."""
    try:
        return _run(["git", *args], timeout=GIT_TIMEOUT, env={**os.environ, **_GIT_QUIET})
    except subprocess.TimeoutExpired:
        raise PackInstallError(
            f"{what} did not finish within {GIT_TIMEOUT:g} s and was stopped: the server did not answer, or the "
            f"repository is too large for this link; clone it yourself and install the folder") from None
    except FileNotFoundError:
        raise PackInstallError(f"{what}: git is not installed; install git, or install the pack from a "
                               f"folder") from None


def _git_failed(what: str, stderr: str) -> PackInstallError:
    said = stderr.strip() or "git said nothing"
    if _CREDENTIALS.search(said):
        said += ("; the repository needs credentials, and Squall never asks for them: give git credentials it "
                 "can use without asking (a credential helper for an https URL, an SSH key in the agent or "
                 "~/.ssh for a git@ URL), or clone it yourself and install the folder")
    return PackInstallError(f"{what} failed: {said}")


def _fetch(source: _Source, workdir: Path, progress: Progress) -> Path:
    """The pack's files: the folder itself, or a clone in `workdir` checked out at the ref asked for."""
    if not source.clone:
        return Path(source.location)
    target = workdir / "clone"
    progress(f"cloning {source.location}" + (f" at {source.ref}" if source.ref else ""))
    what = f"git clone {source.location}"
    options = ["--no-checkout"] if source.ref else ["--depth", "1"]
    code, _, err = _git("clone", "--quiet", *options, "--", source.location, str(target), what=what)
    if code != 0:
        hint = "" if "://" in source.location or source.location.startswith("git@") else (
            f" ({source.location}=REF needs a git repository; without =REF the folder is copied as it is)")
        raise _git_failed(what, err + hint)
    if source.ref:
        commit = _commit_of(target, source)
        code, _, err = _git("-C", str(target), "checkout", "--quiet", "--detach", commit, what=what)
        if code != 0:
            raise _git_failed(f"git checkout {source.ref}", err)
    return target


def _commit_of(repo: Path, source: _Source) -> str:
    """The commit `source.ref` names, tried as st2's clone_repo tries it: a branch, then a tag or a
    commit, then (for a version such as 1.0.0) the tag v1.0.0."""
    ref = str(source.ref)
    candidates = [f"refs/remotes/origin/{ref}", ref, *([f"refs/tags/v{ref}"] if _VERSION.match(ref) else [])]
    for candidate in candidates:
        code, out, _ = _git("-C", str(repo), "rev-parse", "--verify", "--quiet", f"{candidate}^{{commit}}",
                            what=f"git rev-parse {ref}")
        if code == 0:
            return out.strip()
    said = f'"{ref}" is not a branch, tag or commit of {source.location}'
    _, tags, _ = _git("-C", str(repo), "tag", "--list", what="git tag")
    versions = {tag.removeprefix("v") for tag in tags.split() if _VERSION.match(tag.removeprefix("v"))}
    if versions:
        ordered = sorted(versions, key=lambda version: tuple(int(part) for part in version.split(".")))
        raise PackInstallError(f"{said}; its versions (tags vX.Y.Z) are: {', '.join(ordered)}")
    _, branches, _ = _git("-C", str(repo), "branch", "--remotes", "--format=%(refname:lstrip=3)", what="git branch")
    names = [name for name in branches.split() if name != "HEAD"]
    raise PackInstallError(f"{said}; it has no version tags, and its branches are: {', '.join(names) or 'none'}")


#: Written into a pack's virtualenv folder when some of its requirements could not be installed; a
#: rebuilt virtualenv (the next `squall pack install`) starts without it, `squall pack remove` deletes it.
FAILED_REQUIREMENTS_FILE = "squall-requirements-failed.json"


@dataclass(frozen=True)
class RequirementFailure:
    """One line of a pack's requirements.txt that pip could not install, said for people.

    Exchange packs pin packages that no longer build (psycopg2==2.8 needs pg_config, lxml needs
    libxml2's headers) or that no longer exist; the pack is still worth installing, so the failure
    is recorded instead of refusing the pack, and the message names the line, pip's reason and a fix.
    """

    requirement: str  #: the line as written (continuations joined, comment removed)
    line: int  #: its line number in requirements.txt (0: the file as a whole)
    problem: str  #: "failed to build", "was not found on the package index", ...
    reason: str  #: the key line(s) of pip's output
    fix: str  #: what to do about it ("install libpq-dev, or relax the pin in ...")
    again: str  #: how to install the pack again afterwards ("run `squall pack install SOURCE` again")
    #: Where the pack's code imports a requirement requirements.txt does not list, installed as if listed
    #: (`UnlistedRequirement`: "actions/lib/action.py, line 3"); empty for a line of the file.
    imported_by: str = ""

    def summary(self) -> str:
        """`requirement psycopg2==2.8 failed to build: pg_config executable not found`."""
        imported = f" (imported by {self.imported_by})" if self.imported_by else ""
        return f"requirement {self.requirement}{imported} {self.problem}: {self.reason}"

    def paragraph(self, pack: str, requirements: Path) -> str:
        """The whole story in one paragraph, for `squall pack install`."""
        where = f"line {self.line} of {requirements}" if self.line else str(requirements)
        if self.imported_by:
            where = f"imported by {self.imported_by}, not listed in {requirements}: installed as if listed"
        return (f"requirement {self.requirement} ({where}) {self.problem}: {self.reason}. The pack {pack} is "
                f"installed with its other requirements, but its Python actions that import this one fail "
                f"until it is fixed: {self.advice}.")

    @property
    def advice(self) -> str:
        """What to do, then install again."""
        return f"{self.fix}, then {self.again}"

    def document(self) -> dict[str, Any]:
        return {"requirement": self.requirement, "line": self.line, "problem": self.problem,
                "reason": self.reason, "advice": self.advice, "imported_by": self.imported_by or None}

    def record(self) -> dict[str, Any]:
        """What the virtualenv folder keeps (`failed_requirements` reads it back)."""
        return {"requirement": self.requirement, "line": self.line, "problem": self.problem,
                "reason": self.reason, "fix": self.fix, "again": self.again, "imported_by": self.imported_by}


def build_virtualenv(pack: str, requirements: Path, venv: Path, progress: Progress, *,
                     shown_as: Path | None = None, source: str | None = None,
                     unlisted: Sequence[UnlistedRequirement] = ()) -> list[RequirementFailure]:
    """A fresh virtualenv at `venv` (whatever is there is deleted first) with the pack's requirements.

    `install_pack` builds it beside the live one (`<venv>.new`) and swaps it in once complete, so
    the installed version's actions keep theirs until then. Returns the requirement lines that could
    not be installed, also recorded in the virtualenv folder (`FAILED_REQUIREMENTS_FILE`), so the
    pack's Python actions can say why an import fails. `shown_as` is where people will find the
    requirements file (the installed copy, not the staging one) and `source` what to install again;
    both only word the advice. `unlisted` (`unlisted_requirements`) is installed first, as a line of
    the file would be; the file, which need not exist then, after it.
    """
    progress(f"creating virtualenv {venv}")
    _delete(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    code, _, err = _run([sys.executable, "-m", "venv", str(venv)])
    if code != 0:
        raise PackInstallError(f"cannot create a virtualenv for {pack}: {err.strip()}")
    shown = shown_as or requirements
    failures = _install_unlisted(venv, requirements, progress, pack, shown, source, unlisted)
    listed = _install_requirements(venv, requirements, progress, pack, shown, source) if requirements.is_file() else []
    _complete_families(venv, requirements, progress, pack, shown, with_file=requirements.is_file() and not listed)
    failures += listed
    if failures:
        record = {"pack": pack, "requirements": str(shown), "failed": [failure.record() for failure in failures]}
        (venv / FAILED_REQUIREMENTS_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return failures


def _install_requirements(venv: Path, requirements: Path, progress: Progress, pack: str, shown_as: Path,
                          source: str | None) -> list[RequirementFailure]:
    """Install the pack's requirements file; the lines that failed (a whole file whose lines install one
    by one but not together: one failure for the file, line 0)."""
    progress(f"installing {requirements.name} of {pack}")
    code, output = _pip_install(venv, requirements, progress, pack)
    if code == 0:
        return []
    # pip installs nothing when one requirement fails, so one line at a time now: the others are
    # installed and each failing line is named with its own reason.
    progress(f"pip could not install {requirements.name} as a whole; installing its requirements one at a time")
    failures = _install_line_by_line(venv, requirements, progress, pack, shown_as, source)
    if not failures:  # every line installs alone, not together: conflicting pins
        failures = [RequirementFailure(
            requirement=requirements.name, line=0, problem="could not be installed as a whole",
            reason=pip_reason(output) or "pip failed without saying why",
            fix=f"make the pins in {shown_as} agree with each other", again=_again(source))]
    return failures


def _install_unlisted(venv: Path, requirements: Path, progress: Progress, pack: str, shown_as: Path,
                      source: str | None, unlisted: Sequence[UnlistedRequirement]) -> list[RequirementFailure]:
    """Install each of `unlisted` alone, as a line of the pack's requirements file would be (with its
    options: its index, `--find-links`); the ones that failed.

    Before the file and in a resolution of its own: the file is installed over it, so where the pack's
    pins and its dependencies' disagree (the st2 pack pins `PrettyTable<0.8`, st2client 3.9 wants 3.11)
    the pack's pins win, as under StackStorm, whose actions find the pack's virtualenv before st2's, and
    the pack's requirements are not reported as conflicting with a package they never listed."""
    if not unlisted:
        return []
    options = requirement_lines(requirements.read_text(errors="replace"))[0] if requirements.is_file() else []
    failures: list[RequirementFailure] = []
    with _one_line_file(requirements) as single:
        for need in unlisted:
            progress(f"installing {need.requirement} for {pack}")
            failure = _install_line(venv, single, options, (0, need.requirement), progress, pack, shown_as,
                                    source, need)
            failures += [failure] if failure else []
    return failures


#: Packages that work only at versions made for each other: pyOpenSSL calls into its cryptography's
#: bindings (pyOpenSSL 26 with cryptography 41: `AttributeError: module 'lib' has no attribute ...`), and
#: cryptography's compiled bindings load cffi's backend, of a version its own pins. A pack's actions and
#: sensors find the pack's virtualenv first and Squall's site-packages after it, so a family member the
#: virtualenv lacks would come from Squall, made for Squall's copies of the others, not the pack's.
#: Others (requests and urllib3, ...) accept a wide range of each other and are left alone.
PACKAGE_FAMILIES: tuple[tuple[str, ...], ...] = (("cffi", "cryptography", "pyOpenSSL"),)


def _complete_families(venv: Path, requirements: Path, progress: Progress, pack: str, shown_as: Path, *,
                       with_file: bool) -> None:
    """Install into `venv` each member of a `PACKAGE_FAMILIES` family that Squall's site-packages has and
    the virtualenv lacks, when the virtualenv has another member at a version Squall's differs from (the
    pack pinned it, or a requirement pulled it in).

    pip resolves them together with the pack's requirements file (`with_file`: it installed whole), so
    its pins hold and a member it only pulled in may move to a version the missing ones fit (flanker's
    unpinned cryptography, newer than any pyOpenSSL, steps back to the newest that one fits); else with
    the members the virtualenv has pinned to their versions. A member that cannot be installed does not
    fail the install: the pack's requirements are all there, and only code that imports that member can
    meet the mismatch, so it is said, with what to do."""
    theirs = _distributions([str(site) for site in venv.glob("lib/python*/site-packages")])
    members = {_normal(name) for family in PACKAGE_FAMILIES for name in family}
    if not members & theirs.keys():
        return  # most packs: no member of any family, and Squall's own site-packages need not be read
    ours = _distributions([sysconfig.get_paths()["purelib"]])
    for family in PACKAGE_FAMILIES:
        keys = {_normal(name): name for name in family}
        present = [f"{keys[key]}=={theirs[key]}" for key in keys if key in theirs]
        missing = [keys[key] for key in keys if key in ours and key not in theirs]
        if not missing or all(theirs[key] == ours.get(key) for key in keys if key in theirs):
            continue  # nothing of the family in the virtualenv, or only Squall's very versions
        names, pins = " and ".join(missing), ", ".join(present)
        squalls = ", ".join(f"{keys[key]}=={ours[key]}" for key in keys if key in ours)
        options, lines = requirement_lines(requirements.read_text(errors="replace")) if with_file else ([], [])
        progress(f"{pack}'s virtualenv has {pins} but not {names}, which its Python actions and sensors would "
                 f"then import from Squall's own site-packages, made for other versions ({squalls}): installing "
                 f"{names} into {pack}'s virtualenv, the version that fits "
                 f"{requirements.name + ' of ' + pack if with_file else pins}")
        with _one_line_file(requirements) as single:
            single.write_text("\n".join([*options, *([line for _, line in lines] or present), *missing]) + "\n")
            code, output = _pip_install(venv, single, progress, pack)
        if code != 0:
            reason = pip_reason(output, single.name, shown_as.name) or "pip failed without saying why"
            progress(f"  could not install {names} into {pack}'s virtualenv: {reason}. The pack is installed, but "
                     f"its Python code that imports {names} gets Squall's, which may not work with {pins}: list a "
                     f"version of {names} that fits in {shown_as}, then install the pack again")


def _distributions(folders: list[str]) -> dict[str, str]:
    """The distributions installed in `folders`: normalised name -> version."""
    return {_normal(dist.metadata["Name"]): dist.version
            for dist in importlib.metadata.distributions(path=folders) if dist.metadata["Name"]}


def _normal(name: str) -> str:
    """A distribution's name as pip compares them (`pyOpenSSL`, `pyopenssl`)."""
    return re.sub(r"[-_.]+", "-", name).lower()


#: The lines of pip's that say what it is doing: each names a requirement or a step of one (the steps
#: are indented under their requirement).
_PIP_STEPS = ("Collecting", "Processing", "Downloading", "Using cached", "Preparing", "Building", "Installing",
              "Successfully")


def _pip_install(venv: Path, requirements: Path, progress: Progress, pack: str) -> tuple[int, str]:
    """Run the virtualenv's pip on a requirements file (from its folder, where relative paths point).

    Its steps are shown as they come, and while it says nothing (a long build) a line every
    `HEARTBEAT` seconds says that it still works: an install may take minutes."""
    argv = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
            "-r", str(requirements)]
    with _child(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=str(requirements.parent),
                bufsize=0) as process:
        assert process.stdout is not None
        lines = _follow(process.stdout.fileno(), progress, f"still installing {pack}'s requirements")
        return process.wait(), "\n".join(lines)


def _follow(fd: int, progress: Progress, waiting: str) -> list[str]:
    """Every line read from `fd` until it closes. pip's steps go to `progress` as they come, and
    `waiting (N s)` after each `HEARTBEAT` seconds without one."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    lines: list[str] = []
    pending = ""
    poller = select.poll()  # not select(): `squall serve` may hold more than 1024 descriptors
    poller.register(fd, select.POLLIN)
    started = told = time.monotonic()
    while True:
        if not poller.poll(max(0.0, told + HEARTBEAT - time.monotonic()) * 1000):
            told = time.monotonic()
            progress(f"  {waiting} ({round(told - started)} s)")
            continue
        chunk = os.read(fd, 65536)
        *complete, pending = re.split(r"\r\n?|\n", pending + decoder.decode(chunk, final=not chunk))
        if not chunk and pending:
            complete.append(pending)
        for line in complete:
            lines.append(line.rstrip())
            if line.strip().startswith(_PIP_STEPS):
                progress("  " + line.strip())
                told = time.monotonic()
        if not chunk:
            return lines


def requirement_lines(text: str) -> tuple[list[str], list[tuple[int, str]]]:
    """(option lines that apply to every requirement, [(line number, requirement line)]).

    Continuation lines are joined and comments removed, as pip reads the file. `-r` and `-e` lines
    are requirements of their own; other options (`--index-url`, `-c`, `--find-links`) are global.
    """
    options: list[str] = []
    requirements: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        if not pending:
            start = number
        if raw.endswith("\\"):
            pending += raw[:-1]
            continue
        line = _COMMENT.sub("", pending + raw).strip()
        pending = ""
        if not line:
            continue
        if line.startswith("-") and not _OWN_LINE_OPTION.match(line):
            options.append(line)
        else:
            requirements.append((start, line))
    if pending.strip():
        requirements.append((start, _COMMENT.sub("", pending).strip()))
    return options, requirements


_COMMENT = re.compile(r"(^|\s+)#.*$")
_OWN_LINE_OPTION = re.compile(r"^(-r|--requirement|-e|--editable)\b")


def _install_line_by_line(venv: Path, requirements: Path, progress: Progress, pack: str, shown_as: Path,
                          source: str | None) -> list[RequirementFailure]:
    """Install each requirement line alone (with the file's options); the lines that fail, explained."""
    options, lines = requirement_lines(requirements.read_text(errors="replace"))
    failures: list[RequirementFailure] = []
    with _one_line_file(requirements) as single:
        for index, entry in enumerate(lines, start=1):
            progress(f"requirement {index}/{len(lines)}: {entry[1]}")
            failure = _install_line(venv, single, options, entry, progress, pack, shown_as, source)
            failures += [failure] if failure else []
    return failures


@contextlib.contextmanager
def _one_line_file(requirements: Path) -> Iterator[Path]:
    """A requirements file of its own for one line, beside the original (deleted after): relative paths,
    `-r` includes and per-line options (`--hash`, markers) mean there what they meant in the original."""
    single = requirements.parent / f".squall-requirement-{os.getpid()}.txt"
    try:
        yield single
    finally:
        single.unlink(missing_ok=True)


def _install_line(venv: Path, single: Path, options: list[str], entry: tuple[int, str], progress: Progress,
                  pack: str, shown_as: Path, source: str | None,
                  unlisted: UnlistedRequirement | None = None) -> RequirementFailure | None:
    """Install one requirement line (`entry`: its number, the line) with the file's `options` through the
    one-line file `single`; None when it installed, else why not and what to do."""
    number, line = entry
    single.write_text("\n".join([*options, line]) + "\n")
    code, output = _pip_install(venv, single, progress, pack)
    if code == 0:
        return None
    reason = pip_reason(output, single.name, shown_as.name) or "pip failed without saying why"
    failure = RequirementFailure(line, number, _problem(output), reason, _fix(reason, output, shown_as, unlisted),
                                 _again(source), unlisted.where if unlisted else "")
    progress(f"  {failure.summary()}")
    return failure


#: Lines of a build's output that only say that something failed, not what, or echo source code.
_GENERIC = re.compile(
    r"(?i)^(error: (subprocess-exited-with-error|metadata-generation-failed|legacy-install-failure|"
    r"failed-wheel-build-for-install|command )|compile failed: |traceback \(most recent call last\)|"
    r"note: |hint: |raise |file \"|\[end of output\]|[\u00d7\u2570\u2502])")
#: The lines of a failed build that say why, best first: what setup scripts and Python raise
#: ("Error: pg_config executable not found.", "RuntimeError: ...") and a compiler's fatal errors,
#: then a compiler's errors, then anything that says something is missing.
_TELLING = (
    re.compile(r"^([\w.]*(Error|Exception)|error): |fatal error"),
    re.compile(r"\berror: "),
    re.compile(r"(?i)not found|no such file|is required|please (make sure|install)|is \S+ installed"),
)


def pip_reason(output: str, single_file: str | None = None, shown_file: str | None = None) -> str:
    """The key line of pip's output: what the failing build said, else pip's own `ERROR:` lines.

    A build that failed prints its own output between `[N lines of output]` and `[end of output]`
    (older pip: after `Complete output from command`); the line naming the cause is there
    ("Error: pg_config executable not found.", "etree.c:274:12: fatal error: longintrepr.h: No such
    file or directory"). Otherwise pip's "No matching distribution found for X==Y" or "Invalid
    requirement" is the cause, with pip's hint after it. `single_file` (the one-line requirements
    file pip was given) is renamed `shown_file` in what is returned."""
    lines = [line.strip() for line in output.splitlines()]
    built: list[str] = []
    inside = False
    for line in lines:
        if re.search(r"\[\d+ lines? of output\]$|^Complete output from command", line):
            inside = True
        elif line == "[end of output]" or line.startswith("-" * 20):
            inside = False
        elif inside and line and not _GENERIC.match(line):
            built.append(line)
    chosen = next(([line for line in built if pattern.search(line)][:1] for pattern in _TELLING
                   if any(pattern.search(line) for line in built)), [])
    if not chosen:
        own = [line[len("ERROR: "):] for line in lines if line.startswith("ERROR: ")]
        missing = [line for line in own if line.startswith("No matching distribution")]
        chosen = missing or own[:1]
        chosen += [line[len("Hint: "):] for line in lines if line.startswith("Hint: ")][:1]
    if not chosen:
        chosen = [line for line in lines if line and not _GENERIC.match(line)][-1:]
    reason = "; ".join(re.sub(r"^(error|Error|ERROR): ", "", line).rstrip(".") for line in chosen)
    reason = re.sub(r" \(from line \d+ of [^)]*\)", "", reason)
    reason = re.sub(r"^Invalid requirement: '[^']*'(; |: )?(?=.)", "", reason)  # the line is named already
    if single_file and shown_file:
        reason = reason.replace(single_file, shown_file)
    return reason[:400]


def _problem(output: str) -> str:
    if "No matching distribution found" in output:
        return "was not found on the package index"
    if "Invalid requirement" in output:
        return "is not a valid requirement"
    if re.search(r"subprocess-exited-with-error|Failed building wheel|setup\.py|egg_info|"
                 r"Complete output from command", output):
        return "failed to build"
    return "could not be installed"


#: What a build's failure usually needs: (pattern of pip's output, the system package to install).
_SYSTEM_PACKAGES: tuple[tuple[str, str], ...] = (
    (r"pg_config", "PostgreSQL's client development files (Debian/Ubuntu: libpq-dev; Fedora/RHEL: libpq-devel)"),
    (r"libxml|libxslt|xmlversion\.h", "the libxml2 and libxslt development files (Debian/Ubuntu: libxml2-dev "
                                        "libxslt1-dev; Fedora/RHEL: libxml2-devel libxslt-devel)"),
    (r"mysql_config|mariadb_config", "the MySQL client development files (Debian/Ubuntu: "
                                     "default-libmysqlclient-dev; Fedora/RHEL: mariadb-connector-c-devel)"),
    (r"Python\.h", "Python's development headers (Debian/Ubuntu: python3-dev; Fedora/RHEL: python3-devel)"),
    (r"ffi\.h", "libffi's development files (Debian/Ubuntu: libffi-dev; Fedora/RHEL: libffi-devel)"),
    (r"openssl/\w+\.h", "OpenSSL's development files (Debian/Ubuntu: libssl-dev; Fedora/RHEL: openssl-devel)"),
    (r"ldap\.h|lber\.h|sasl/sasl\.h", "the OpenLDAP and SASL development files (Debian/Ubuntu: libldap2-dev "
                                       "libsasl2-dev; Fedora/RHEL: openldap-devel cyrus-sasl-devel)"),
    (r"krb5-config|gssapi", "Kerberos' development files (Debian/Ubuntu: libkrb5-dev; Fedora/RHEL: krb5-devel)"),
    (r"unable to execute '?\S*gcc|gcc: (error|not found)|\bcc: not found|command '\S*gcc' failed: No such file",
     "a C compiler (Debian/Ubuntu: build-essential; Fedora/RHEL: gcc)"),
)


def _again(source: str | None) -> str:
    return f"run `squall pack install {source}` again" if source else "install the pack again"


def _fix(reason: str, output: str, requirements: Path, unlisted: UnlistedRequirement | None = None) -> str:
    """What to do, worded for the cause pip reported (`unlisted`: a requirement the file has no pin of)."""
    python = f"Python {sys.version_info.major}.{sys.version_info.minor}"
    if unlisted is not None and "No matching distribution found" in output:
        return (f"{unlisted.requirement} comes from the package index as any requirement does: check that the "
                f"package index can be reached from here (pip's settings: PIP_INDEX_URL, pip.conf), or list a "
                f"version of {unlisted.requirement} that installs in {requirements}")
    if "No matching distribution found" in output:
        return (f"check that the name and version exist on the package index (and that the index can be "
                f"reached from here), or change or relax the pin in {requirements}")
    if "Invalid requirement" in output or "does not exist" in reason:
        return f"correct or remove the line in {requirements}"
    for pattern, package in _SYSTEM_PACKAGES:
        if re.search(pattern, reason):  # the reason only: build commands name header folders that exist
            return f"install {package}, or relax the pin in {requirements} to a version that ships a wheel for {python}"
    return (f"the pinned version may be too old to build for {python}, or need a system package with development "
            f"headers: relax the pin in {requirements} to a version that ships a wheel for {python}, or install "
            f"what the build needs")


def failed_requirements(venv: Path) -> list[RequirementFailure]:
    """The requirements the last install of the pack could not install (empty: its virtualenv is complete)."""
    try:
        record = json.loads((venv / FAILED_REQUIREMENTS_FILE).read_text())
    except (OSError, ValueError):
        return []
    fields = ("requirement", "line", "problem", "reason", "fix", "again", "imported_by")
    return [RequirementFailure(**{key: item.get(key, "") for key in fields})
            for item in record.get("failed", []) if isinstance(item, dict)]


def incomplete_virtualenv_reason(pack: str, venv: Path) -> str | None:
    """Why the pack's Python actions may fail to import something, or None when nothing failed to install.

    `pack demo's virtualenv is incomplete: requirement psycopg2==2.8 failed to build: pg_config
    executable not found; install PostgreSQL's client development files (...), then run ...`."""
    failures = failed_requirements(venv)
    if not failures:
        return None
    told = "; ".join(f"{failure.summary()}; to fix it, {failure.fix}" for failure in failures)
    return f"pack {pack}'s virtualenv is incomplete: {told}; then {failures[0].again}"


def import_failure_reason(pack: str, venv: Path, module: str | None) -> str | None:
    """Why a Python action of `pack` failed to import `module` (None: not known), or None when Squall cannot
    tell more than the traceback does.

    A package StackStorm provides to its actions (`PROVIDED_BY_STACKSTORM`) that is not in the virtualenv
    and not among its recorded failures is said as what it is and how to get it; otherwise the recorded
    failures are the reason (`incomplete_virtualenv_reason`)."""
    if module in PROVIDED_BY_STACKSTORM and not any(module in _names_in(failure.requirement)
                                                    for failure in failed_requirements(venv)):
        return _provided_missing_reason(pack, venv, module)
    return incomplete_virtualenv_reason(pack, venv)


def _provided_missing_reason(pack: str, venv: Path, module: str) -> str:
    """`the action imports st2client, StackStorm's API client, which Squall does not ship, ...`: what
    the package is, why it is missing here although it works under StackStorm, and both ways to add it."""
    if (venv / "bin" / "python").exists():
        lacking, yourself = f"pack {pack}'s virtualenv does not have it", f"{venv}/bin/pip install {module}"
    else:
        lacking, yourself = f"pack {pack} has no virtualenv with it", (
            f"python3 -m venv {venv} && {venv}/bin/pip install {module}")
    return (f"the action imports {module}, {PROVIDED_BY_STACKSTORM[module]}, which Squall does not ship, and "
            f"{lacking} (StackStorm's actions import it from st2's own virtualenv, so packs do not list it in "
            f"requirements.txt). `squall pack install <the pack's folder or git URL>` again installs it into the "
            f"pack's virtualenv (an install does whenever the pack's Python code imports {module} and its "
            f"requirements.txt does not list it), or install it there yourself: `{yourself}`")


# -- requirements StackStorm provides: installed as if listed ----------------------------------------

#: Packages StackStorm's actions and sensors import from st2's own virtualenv, so packs use them without
#: listing them in requirements.txt (StackStorm's own `st2` pack cannot list st2client; the aws pack's
#: actions, the github, email and slack packs' sensors import eventlet); Squall ships none of them. An
#: install puts each that a pack's Python code imports into the pack's virtualenv as if requirements.txt
#: listed it: name (the module's and the distribution's) -> what it is, for messages.
PROVIDED_BY_STACKSTORM = {"st2client": "StackStorm's API client",
                          "eventlet": "the green-thread library StackStorm runs on"}
#: The folders of a pack whose Python code runs: actions (with their `lib`), sensors, the pack's `lib`.
_CODE_FOLDERS = ("actions", "sensors", "lib")
#: How much of each .py file the scan reads: a module's imports are at its top.
_SCAN_BYTES = 256 * 1024


@dataclass(frozen=True)
class UnlistedRequirement:
    """A package of `PROVIDED_BY_STACKSTORM` that the pack's Python code imports and its requirements.txt
    does not list. Under StackStorm it works; here it is installed into the pack's virtualenv as if listed
    (from the package index, unpinned), since without it every action importing it fails."""

    requirement: str  #: its name, as a requirement line
    file: str  #: the first file importing it, relative to the pack's folder
    line: int  #: the line of that import

    @property
    def where(self) -> str:
        return f"{self.file}, line {self.line}"

    def said(self, pack: str) -> str:
        """The progress line of an install."""
        return (f"{pack}'s Python code imports {self.requirement} ({self.where}), "
                f"{PROVIDED_BY_STACKSTORM[self.requirement]}, which its requirements.txt does not list: installing "
                f"{self.requirement} into {pack}'s virtualenv as if listed (from the package index, unpinned; "
                f"StackStorm's actions and sensors get it from st2's own virtualenv, and Squall does not ship it)")

    def warning(self, folder: Path, installed: bool) -> ContentWarning:
        """What `squall pack install` warns of (`--json`: one of `errors`) once the pack is in `folder`."""
        name = self.requirement
        outcome = (f"installed {name} (unpinned: the newest the package index has) into the pack's virtualenv as "
                   f"if listed" if installed else f"tried to install {name} as if listed, which failed (said with "
                   f"the requirements that did not install)")
        return ContentWarning(str(folder / self.file), self.line, (
            f"imports {name}, {PROVIDED_BY_STACKSTORM[name]}, which StackStorm's actions and sensors get from "
            f"st2's own virtualenv and Squall does not ship; the pack's requirements.txt does not list it, so "
            f"`squall pack install` {outcome}. To choose its version, list {name} in requirements.txt"))


def unlisted_requirements(folder: Path) -> list[UnlistedRequirement]:
    """The packages of `PROVIDED_BY_STACKSTORM` that the Python code in the pack at `folder` imports
    (`import st2client`, `from st2client.client import Client`) and its requirements.txt (with the
    files it includes) does not list. A cheap scan of the text: no module is imported or parsed."""
    listed = {name for _, number, line in _requirement_entries(folder / "requirements.txt", set()) if number
              for name in _names_in(line)}
    needed: list[UnlistedRequirement] = []
    for name in PROVIDED_BY_STACKSTORM:
        if name not in listed and (found := _first_import(folder, name)) is not None:
            needed.append(UnlistedRequirement(name, *found))
    return needed


def _names_in(line: str) -> set[str]:
    """The distribution names a requirement line installs as far as the line says (normalised as pip
    compares them): its name (`st2client==3.9`, `St2Client @ URL`), a URL's `#egg=`, a file's
    `st2client-3.9.0-py3-none-any.whl`."""
    found = re.findall(r"[#&]egg=([A-Za-z0-9][\w.-]*)", line)
    if match := re.match(r"^([A-Za-z0-9][\w.-]*)\s*(?=[\[<>=!~;@\s]|$)", line):
        found.append(match[1])
    if match := re.search(r"(?:^|/)([A-Za-z0-9][\w.]*?)-\d[^/]*\.(?:whl|tar\.gz|zip)$", line):
        found.append(match[1])
    return {_normal(name) for name in found}


def _first_import(folder: Path, module: str) -> tuple[str, int] | None:
    """(file relative to `folder`, line) of the first statement of the pack's code that imports `module`."""
    pattern = re.compile(rf"^[ \t]*(?:from[ \t]+{module}(?:\.[\w.]+)?[ \t]+import\b|"
                         rf"import[ \t]+(?:[^#\n]*,[ \t]*)?{module}(?![\w]))", re.MULTILINE)
    for path in _code_files(folder):
        try:
            with open(path, "rb") as handle:
                text = handle.read(_SCAN_BYTES).decode("utf-8", "replace")
        except OSError:
            continue
        if match := pattern.search(text):
            return path.relative_to(folder).as_posix(), text.count("\n", 0, match.start()) + 1
    return None


def _code_files(folder: Path) -> Iterator[Path]:
    """The .py files under the pack's `_CODE_FOLDERS`, in a stable order (hidden folders and byte code left out)."""
    for top in _CODE_FOLDERS:
        for root, folders, files in os.walk(folder / top):
            folders[:] = sorted(name for name in folders if not name.startswith(".") and name != "__pycache__")
            yield from (Path(root) / name for name in sorted(files) if name.endswith(".py"))


def split_missing_config(ref: str, configs_path: Path,
                         errors: Iterable[ContentError]) -> tuple[list[ContentError], list[ContentError]]:
    """(the problems that only say `configs/<ref>.yaml` does not exist yet, every other problem).

    A freshly installed pack has no config file; StackStorm registers it and its actions fail
    until one is written, so an install must not fail on that (it says which keys are needed,
    `needed_config_keys`). A problem can name a config file that does not exist only because the
    schema's required keys were checked against the defaults alone, which is what this selects."""
    config_file = configs_path / f"{ref}.yaml"
    missing: list[ContentError] = []
    others: list[ContentError] = []
    absent = not config_file.exists()
    for error in errors:
        names_config = Path(error.file).resolve() == config_file.resolve()
        (missing if absent and names_config else others).append(error)
    return missing, others


def needed_config_keys(pack: Pack) -> list[str]:
    """The config keys still to be set: required by the pack's config schema, without a default, not in its
    config (nested objects as `parent.key`), as StackStorm's check of a config asks for them.

    A key inside an object is needed only when that object is required too or the config sets it. The
    loader hands actions every object filled in (`engine.packs._apply_defaults`), but the check leaves out
    an optional object the file leaves out, and its required keys with it (github's
    `repository_sensor.repositories`, slack's `admin.organization`); so is an optional item that only a
    `$ref` points at (napalm's `cred_group`, the shape of each of its `credentials`). An optional object
    counts as set when it holds more than its defaults; one written with its defaults alone is left to
    the check of the config, which says what it lacks."""
    return _needed(pack.config_schema, pack.config, "")


def _needed(schema: dict[str, Any], values: Any, prefix: str) -> list[str]:
    values = values if isinstance(values, dict) else {}
    needed: list[str] = []
    for key, spec in schema.items():
        if not isinstance(spec, dict):
            continue
        if key not in values:
            if spec.get("required") and "default" not in spec:
                needed.append(prefix + key)
            continue
        properties = spec.get("properties")
        if spec.get("type") == "object" and isinstance(properties, dict) and (
                spec.get("required") or values[key] != _apply_defaults(properties, {}, absent_objects=True)):
            needed.extend(_needed(properties, values[key], f"{prefix}{key}."))
    return needed


# -- installing --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Planned:
    """A pack fetched and checked, to be installed in plan order (dependencies first)."""

    source: str  #: as given: for messages and "install it again"
    folder: Path  #: its files (the source folder, or a clone in the install's temporary folder)
    pack: Pack
    needs: tuple[str, ...]  #: dependencies given by name (`name` or `name=version`): installed already
    needed_by: str | None  #: the pack that depends on it (None: the pack asked for)


#: The login in a URL (`user:token@` after `://`), up to its last `@` (a password may hold one unescaped).
_USERINFO = re.compile(r"(?<=://)[^/\s]*@")


def shown_source(text: str) -> str:
    """`text` with the login of every URL in it (`https://user:token@host/...`) replaced by `***`: what an
    install says (progress, errors, the audit log, the requirements record) goes to screens, logs and audit
    sinks, and a deploy token in a git URL must reach none of them. The one rule for the CLI and the web."""
    return _USERINFO.sub("***@", text)


class PackHidden(PackInstallError):
    """An install refused before anything was put in place, since Squall would not load the pack installed:
    another pack of its ref is found first in `packs.paths`, or `install_path` is not one of them."""


def install_pack(source: str, install_path: Path, configs_path: Path, virtualenvs: Path, progress: Progress,
                 *, pack_paths: Iterable[Path] = ()) -> tuple[Pack, list[ContentError]]:
    """Install a pack from a folder or git URL into `install_path`; returns it and its content errors.

    As `st2 pack install`, the dependencies its pack.yaml lists are installed first when given as a
    folder or git URL (recursively, each once; a cycle is refused). One given by name (`name` or
    `name=version`) must be installed already (in `install_path`, `pack_paths` or the shipped packs),
    at that version when one is given: Squall has no pack index to fetch it from. Everything is
    fetched and checked before anything installed is touched.

    A git URL's credentials are said nowhere (`shown_source`): not in progress lines, errors, nor the
    record of requirements that failed, which a Python action's error quotes. With `pack_paths`, the pack
    installed must be the one Squall then loads under its ref, or nothing is installed (`PackHidden`):
    "installed" is no success when an older copy earlier in `packs.paths` is what runs."""
    paths = list(pack_paths)

    def said(line: str) -> None:
        progress(shown_source(line))

    try:
        return _install(source, install_path, configs_path, virtualenvs, said, paths)
    except PackInstallError as exc:
        if shown_source(str(exc)) == str(exc):
            raise
        raise PackInstallError(shown_source(str(exc))) from None


def _refuse_hidden(pack: Pack, install_path: Path, pack_paths: list[Path]) -> None:
    """`PackHidden` unless the folder Squall would load `pack.ref` from once `pack` is installed in
    `install_path` (`load_registry`'s order) is the one it goes to: checked before anything is put in
    place, so a refused install leaves the copy that runs, and its virtualenv, as they were."""
    target = install_path / pack.ref
    folders = discover(pack_paths, adding=target)
    where = f"{pack.ref} {pack.version} would be installed at {target}"
    if target.resolve() not in {folder.resolve() for folder in folders}:
        raise PackHidden(f"{where}, but {install_path} (packs.install_path) is not one of packs.paths "
                         f"({', '.join(map(str, pack_paths))}), so Squall would never load it: add {install_path} to "
                         f"packs.paths in the config. Nothing was installed")
    folder, version = _loaded_from(pack.ref, folders, target) or (target, pack.version)
    if folder.resolve() == target.resolve():
        return
    fix = (f"remove {folder}" if folder.parent.resolve() == install_path.resolve() else
           f"remove {folder} (or move it out of {folder.parent}), or list {install_path} before {folder.parent} "
           f"in packs.paths in the config")
    raise PackHidden(f"{where}, but Squall loads {pack.ref} {version} from {folder}, which it finds first "
                     f"(packs.paths in order, the packs in each by folder name) and which would hide it. Nothing "
                     f"was installed. To use {pack.ref} {pack.version}, {fix}; `squall pack list` shows the one "
                     f"loaded")


def _loaded_from(ref: str, folders: list[Path], ours: Path | None = None) -> tuple[Path, str] | None:
    """(folder, version) of the pack that loads as `ref`: the first of `folders` (discovered in the order
    `load_registry` reads them) whose pack.yaml names it, `ours` (the folder being installed) counting as
    one; None when none does."""
    for folder in folders:
        if folder == ours:
            return folder, ""
        try:
            metadata, _ = load_yaml(folder / "pack.yaml")
        except ContentInvalid:
            continue
        if isinstance(metadata, dict) and (metadata.get("ref") or metadata.get("name")) == ref:
            return folder, str(metadata.get("version", "0.0.0"))
    return None


def _install(source: str, install_path: Path, configs_path: Path, virtualenvs: Path, progress: Progress,
             pack_paths: list[Path]) -> tuple[Pack, list[ContentError]]:
    """`install_pack`'s work: plan, check, install in plan order, then load the pack installed."""
    with tempfile.TemporaryDirectory(prefix="squall-pack-") as tmp:
        found = [install_path, *pack_paths]
        plan = _plan(source, Path(tmp), configs_path, progress, found)
        _check_named(plan, _installed(found))
        if pack_paths:  # before anything is put in place: a refused install changes nothing
            for item in plan:
                _refuse_hidden(item.pack, install_path, pack_paths)
        for item in plan:
            _refuse_link(install_path / item.pack.ref)
        notes: list[ContentError] = []  # requirements installed as if listed, said as warnings
        for item in plan:
            if item.needed_by is not None:
                progress(f"{item.needed_by} depends on {item.pack.ref} ({item.source}): installing it first")
            # `again` in the record of failed requirements quotes the source: without its credentials
            notes += _install_one(replace(item, source=shown_source(item.source)), install_path, virtualenvs,
                                  progress)
    registry = Registry()
    installed = load_pack(install_path / plan[-1].pack.ref, registry, configs_path, None)
    assert installed is not None
    _, errors = split_missing_config(installed.ref, configs_path, registry.errors)
    return installed, [*errors, *notes]


def _plan(source: str, workdir: Path, configs_path: Path, progress: Progress,
          installed_in: Iterable[Path] = ()) -> list[_Planned]:
    """Every pack this install puts in place, dependencies first, each once: the pack asked for and,
    recursively, the dependencies given as a folder or git URL, each fetched into `workdir` and checked.

    A dependency installed already in `installed_in` is kept, as st2 keeps it: installing it again
    would silently change the version the packs installed with it use (`_keep_installed`)."""
    planned: dict[str, _Planned] = {}
    fetched: dict[_Source, str] = {}  # -> the ref found there
    probed: dict[str, Pack] = {}
    installed = _installed_metadata(installed_in)

    def visit(text: str, base: Path | None, chain: tuple[str, ...]) -> None:
        where = _parse_source(text, base)
        if where in fetched:  # planned already, or on the chain: a cycle
            _refuse_cycle(chain, fetched[where])
            return
        folder = _fetch(where, workdir / str(len(fetched)), progress)
        _refuse_outside_links(text, folder, source)
        pack = _probe(text, folder, configs_path)
        fetched[where] = pack.ref
        probed.setdefault(pack.ref, pack)
        _refuse_cycle(chain, pack.ref)
        if (other := planned.get(pack.ref)) is not None:
            if other.pack.version != pack.version:
                raise PackInstallError(f"pack {pack.ref} is a dependency twice, in two versions: {other.source} "
                                       f"({other.pack.version}) and {text} ({pack.version}); depend on one of them")
            return
        # A dependency is named as it can be installed from anywhere (its folder made absolute).
        shown = where.location + (f"={where.ref}" if where.ref else "") if chain else text
        if chain and pack.ref in installed:
            progress(_keep_installed(shown, where, pack, probed[chain[-1]], installed, source))
            return
        _refuse_editable(pack, folder, source)
        urls, names = _dependencies(pack)
        for dependency in urls:
            visit(dependency, folder, (*chain, pack.ref))
        planned[pack.ref] = _Planned(shown, folder, pack, tuple(names), chain[-1] if chain else None)

    visit(source, None, ())
    return list(planned.values())


def _refuse_cycle(chain: tuple[str, ...], ref: str) -> None:
    if ref in chain:
        raise PackInstallError(f"the packs' dependencies form a cycle: {' -> '.join([*chain, ref])} (each pack.yaml's "
                               f"dependencies); remove one of them")


def _probe(source: str, folder: Path, configs_path: Path) -> Pack:
    """The pack in `folder`, loaded to check it before anything is installed."""
    if not (folder / "pack.yaml").is_file():
        raise PackInstallError(f"{source} has no pack.yaml at its top; is it a StackStorm pack?")
    probe = Registry()
    pack = load_pack(folder, probe, configs_path, None)
    if pack is None:
        raise PackInstallError("; ".join(str(e) for e in probe.errors) or "pack.yaml is invalid")
    if pack.ref in SYSTEM_PACKS:  # load_pack refuses these names already; kept for a clear message
        raise PackInstallError(f"'{pack.ref}' is a system pack shipped with Squall and cannot be replaced")
    return pack


def _dependencies(pack: Pack) -> tuple[list[str], list[str]]:
    """(dependencies given as a folder or git URL, dependencies given by name).

    As st2 tells them apart: a dependency with no `/` before its `=` is a pack's name (st2 looks it
    up in the Exchange's index), anything else a URL or a folder (`~` and `..` are folders too)."""
    declared = pack.metadata.get("dependencies") or []
    if not isinstance(declared, list) or not all(isinstance(item, str) and item.strip() for item in declared):
        raise PackInstallError(f"{pack.ref}'s pack.yaml: dependencies must be a list of pack names (name or "
                               f"name=version), folders or git URLs (URL=ref); it is {declared!r}")
    urls: list[str] = []
    names: list[str] = []
    for item in (text.strip() for text in declared):
        named = "/" not in item.split("=", 1)[0] and not item.startswith(("~", ".."))
        (names if named else urls).append(item)
    return urls, names


def _installed(folders: Iterable[Path]) -> dict[str, str]:
    """ref -> version of the packs in `folders` and of the shipped packs (read from their pack.yaml only)."""
    return {ref: _version_of(metadata) for ref, metadata in _installed_metadata([SYSTEM_PACKS_PATH, *folders]).items()}


def _installed_metadata(folders: Iterable[Path]) -> dict[str, dict[str, Any]]:
    """ref -> pack.yaml of the packs in `folders` (the first of a ref, as discovery loads it); a pack.yaml
    that does not load is left out, as the pack is."""
    found: dict[str, dict[str, Any]] = {}
    for folder in discover(list(folders)):
        try:
            metadata, _ = load_yaml(folder / "pack.yaml")
        except ContentInvalid:
            continue
        if isinstance(metadata, dict):
            found.setdefault(str(metadata.get("ref") or metadata.get("name")), metadata)
    return found


def _version_of(metadata: dict[str, Any]) -> str:
    return str(metadata.get("version", "0.0.0"))


def _keep_installed(need: str, where: _Source, pack: Pack, parent: Pack, installed: dict[str, dict[str, Any]],
                    root: str) -> str:
    """What to say when `pack`, a dependency of `parent` given as a folder or git URL (`need`), is installed
    already and so kept, as st2's get_pack_dependencies keeps it; refused when `need` pins another version.

    Installing it again would change, silently, the version the installed packs that need it use (a
    downgrade under them); a version pinned that differs is a conflict for people to settle, before
    anything is installed. Squall has no `--force`: installing the wanted version first settles it."""
    present = _version_of(installed[pack.ref])
    if present.removeprefix("v") == pack.version.removeprefix("v"):
        return f"{parent.ref} depends on {pack.ref} ({need}): {pack.ref} {present} is installed already; kept"
    if where.ref is None:
        return (f"{parent.ref} depends on {pack.ref} ({need}, which has {pack.version}): {pack.ref} {present} is "
                f"installed already; kept, as no version is pinned (`squall pack install {need}` installs that one)")
    users = "".join(f", and {user} depends on it ({entry})"
                    for user, entry in _dependents(pack.ref, where.location, installed))
    raise PackInstallError(
        f"{parent.ref} {parent.version} depends on {pack.ref} {pack.version} ({need}), but {pack.ref} {present} is "
        f"installed{users}; installing {parent.ref} would replace it under the packs that use it. Nothing was "
        f"installed. To use {pack.ref} {pack.version} anyway (Squall has no --force), install it first "
        f"(`squall pack install {need}`), then run `squall pack install {root}` again; or make {parent.ref} "
        f"depend on {pack.ref} {present}")


def _dependents(ref: str, location: str, installed: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """(installed pack, the dependency in its pack.yaml) for each dependency that names the pack `ref`: the
    same repository or folder as `location`, or a name, URL or folder that st2 would take for `ref`."""
    found: list[tuple[str, str]] = []
    for user, metadata in sorted(installed.items()):
        declared = metadata.get("dependencies")
        entries = [item.strip() for item in declared if isinstance(item, str)] if isinstance(declared, list) else []
        for entry in entries:
            head = _location(entry)
            if user != ref and (head.rstrip("/") == location.rstrip("/") or _named(head) == ref):
                found.append((user, entry))
    return found


def _location(dependency: str) -> str:
    """A dependency without its `=ref` (a URL's `=` is the first after `://`)."""
    at = dependency.find("=", dependency.find("://") + 3 if "://" in dependency else 0)
    return dependency if at < 0 else dependency[:at]


def _named(location: str) -> str:
    """The pack a dependency's location names, as st2 guesses it: the name, or the last part of a URL's or
    folder's path without `.git` and `stackstorm-` (`https://github.com/StackStorm-Exchange/stackstorm-aws` -> aws)."""
    name = re.split(r"[/:]", location.rstrip("/"))[-1]
    return name.removesuffix(".git").removeprefix("stackstorm-").replace("-", "_")


#: A line of a requirements file that installs editable (`-e X`, `-eX`, `--editable X`, `--editable=X`);
#: `target` is what it installs. A line that includes another file (`-r X`, `--requirement=X`).
_EDITABLE = re.compile(r"^(?:-e|--editable(?=[\s=]|$))\s*=?\s*(?P<target>.*)$")
_INCLUDE = re.compile(r"^(?:-r|--requirement(?=[\s=]|$))\s*=?\s*(?P<file>\S+)")


def _refuse_editable(pack: Pack, folder: Path, root: str) -> None:
    """Refuse, before anything is installed, a pack whose requirements install editable (`root`: the
    source of the install, to run again once fixed).

    The virtualenv is built at `<ref>.new` from the staging copy and both are then moved into place;
    an editable install keeps the paths it was built with (pip's `src` folder in the virtualenv, the
    staging copy of a folder in the pack) in its import hooks, so the pack's actions could not import
    it, although pip said it was installed. A non-editable requirement installs the same code."""
    for file, number, line in _requirement_entries(folder / "requirements.txt", set()):
        if (match := _EDITABLE.match(line)) is None:
            continue
        where = f"line {number} of {pack.ref}'s" if number else f"{pack.ref}'s"
        shown = file.relative_to(folder.resolve()) if file.is_relative_to(folder.resolve()) else file
        raise PackInstallError(
            f"{where} {shown}: {line} is an editable requirement, which Squall cannot install: the pack's "
            f"virtualenv is built aside and moved into place, and an editable install keeps pointing at where "
            f"it was built, so the pack's actions could not import it. Use a non-editable requirement instead: "
            f"`{_not_editable(match['target'])}` (a repository as `NAME @ git+https://...`, a folder of the pack "
            f"as its path without -e), then run `squall pack install {root}` again. Nothing was installed")


_LINKS_NAMED = 20  # refused links named in the error; a pack with thousands of them gets "and N more"


def _refuse_outside_links(text: str, folder: Path, root: str) -> None:
    """Refuse, before the pack is loaded or anything installed, the symlinks in the pack (`folder`, fetched
    from `text`) that point outside it, point nowhere, or are absolute (`root`: the source to install again).

    The pack is copied with its links kept as links; one that is absolute, or leaves the pack and comes
    back, would point outside the installed copy, and one to a file outside is someone else's repository
    making this host copy or serve any file it can read. Only where a link points is looked at: never
    what it points to. Every refused link is named, sorted by path (the first `_LINKS_NAMED`, and how many
    more), so the pack is fixed in one go rather than one link per attempt."""
    top = folder.resolve()
    refused: list[tuple[Path, str, str]] = []  # (path in the pack, where it points, why refused)
    for here, folders, files in os.walk(top):
        ignored = LEFT_BEHIND(here, [*folders, *files])
        folders[:] = [name for name in folders if name not in ignored]
        for name in [*folders, *files]:
            link = Path(here, name)
            if name in ignored or not link.is_symlink():
                continue
            shown, target = link.relative_to(top), os.readlink(link)
            lexical = os.path.normpath(os.path.join(shown.parent, target))
            try:
                real = link.resolve(strict=True)
            except (OSError, RuntimeError):  # points nowhere, or a loop of links
                why = "points to nothing (it dangles or loops)"
            else:
                why = ("points outside the pack" if not real.is_relative_to(top) else
                       "is absolute, so the installed copy would point back here" if os.path.isabs(target) else
                       "leaves the pack on its way" if lexical.split(os.sep)[0] == os.pardir else "")
            if why:
                refused.append((shown, target, why))
    if not refused:
        return
    refused.sort()
    named = "; ".join(f"{shown} is a symlink to {target}, which {why}" for shown, target, why in refused[:_LINKS_NAMED])
    more = len(refused) - _LINKS_NAMED
    one = len(refused) == 1
    raise PackInstallError(
        f"{text}: {'' if one else f'{len(refused)} symlinks are refused: '}{named}"
        f"{f'; and {more} more' if more > 0 else ''}; an install copies only the pack's own files. Replace "
        f"{'the link' if one else 'each link'} with the file itself (or a relative link to a file of the pack), "
        f"then run `squall pack install {root}` again. Nothing was installed")


def _requirement_entries(file: Path, seen: set[Path]) -> Iterator[tuple[Path, int, str]]:
    """(file, line number or 0 for a global option, line) of `file` and of the files it includes with
    `-r`, as pip reads them (an include relative to the file including it)."""
    file = file.resolve()
    if file in seen or not file.is_file():
        return
    seen.add(file)
    options, lines = requirement_lines(file.read_text(errors="replace"))
    for number, line in [*lines, *((0, option) for option in options)]:
        yield file, number, line
        if include := _INCLUDE.match(line):
            yield from _requirement_entries(file.parent / include["file"], seen)


def _not_editable(target: str) -> str:
    """What to write instead of `-e target`: `NAME @ git+URL` for a repository on a host (`#egg=NAME`), else
    the same without -e (a path; a `git+file:///` URL, which the pip of Python 3.11's virtualenvs takes
    only so: its PEP 508 parser wants a host in a `NAME @ URL`)."""
    url, _, fragment = target.strip().strip("\"'").partition("#")
    if not re.match(r"^[a-z]+\+[a-z+]+://[^/]", url):
        return target.strip()
    parts = fragment.split("&") if fragment else []
    name = next((part[len("egg="):] for part in parts if part.startswith("egg=")), "NAME")
    rest = "&".join(part for part in parts if not part.startswith("egg="))
    return f"{name} @ {url}" + (f"#{rest}" if rest else "")


def _check_named(plan: list[_Planned], installed: dict[str, str]) -> None:
    """Refuse, before anything is touched, when a dependency given by name is not installed (nor in
    this install), or not at the version given."""
    have = {**installed, **{item.pack.ref: item.pack.version for item in plan}}
    problems: list[str] = []
    for item in plan:
        missing = []
        for need in item.needs:
            name, _, version = need.partition("=")
            present = have.get(name)
            if present is None:
                missing.append(f"{need} (not installed)")
            elif version and present.removeprefix("v") != version.removeprefix("v"):
                missing.append(f"{need} ({present} is installed)")
        if missing:
            problems.append(f"{item.pack.ref} {item.pack.version} depends on {', '.join(missing)}")
    if problems:
        root = plan[-1].source
        raise PackInstallError(
            f"{'; '.join(problems)}. Nothing was installed. Squall has no pack index to fetch a pack by its name "
            f"from (StackStorm's Exchange): install each first from its folder or git URL (`squall pack install "
            f"<folder|git URL>[=<version>]`; an Exchange pack is https://github.com/StackStorm-Exchange/"
            f"stackstorm-<name>), or give its folder or URL in the dependencies instead of its name; then "
            f"run `squall pack install {root}` again")


def _refuse_link(target: Path) -> None:
    """A pack linked into the packs folder (a checkout being developed) is not replaced by an install."""
    if target.is_symlink():
        raise PackInstallError(
            f"{target} is a symlink to {os.readlink(target)} (a pack linked in, such as a checkout being developed), "
            f"and an install would replace it; nothing was done. Remove the link first (`squall pack remove "
            f"{target.name}` removes only the link, never what it points to), then install again")


def _install_one(item: _Planned, install_path: Path, virtualenvs: Path, progress: Progress) -> list[ContentWarning]:
    """Copy one pack and build its virtualenv beside the installed ones, then put both in place.

    Returns a warning for each requirement installed as if listed (`unlisted_requirements`): the pack
    works, but its requirements.txt does not say what it needs."""
    ref = item.pack.ref
    target, venv = install_path / ref, virtualenvs / ref
    with _pack_lock(install_path, ref, progress):
        _refuse_link(target)  # again: linked while this install waited
        _clear_leftovers(install_path, virtualenvs, ref)
        if ref in REPLACEABLE_PACKS:
            progress(f"this {ref} pack replaces the {ref} pack shipped with Squall: {ref}.* actions come from it "
                     f"from now on; `squall pack remove {ref}` brings the shipped one back")
        staging, fresh = install_path / f".{ref}.installing", venv.with_name(f"{ref}.new")
        progress(f"copying {ref} {item.pack.version} to {target}")
        try:
            try:  # links kept as links: each was checked to stay in the pack (`_refuse_outside_links`)
                shutil.copytree(item.folder, staging, symlinks=True, ignore=LEFT_BEHIND)
            except shutil.Error as exc:
                failed_files = "; ".join(f"{source}: {why}" for source, _, why in exc.args[0])
                raise PackInstallError(f"copying {ref} from {item.folder} failed: {failed_files}; make those regular "
                                       f"readable files (or remove them), then install again; {ref} was not "
                                       f"installed") from None
            unlisted = unlisted_requirements(staging)
            for need in unlisted:
                progress(need.said(ref))
            failed: set[str] = set()
            requirements = (staging / "requirements.txt").is_file() or bool(unlisted)
            if requirements:
                # Requirements that cannot be installed do not stop the install: they are recorded in
                # the virtualenv (`failed_requirements`), so the pack's aliases, rules and other
                # actions work while its Python actions say what is missing.
                failed = {failure.requirement for failure in build_virtualenv(
                    ref, staging / "requirements.txt", fresh, progress, shown_as=target / "requirements.txt",
                    source=item.source, unlisted=unlisted)}
                _relocate(fresh, venv)
            _replace(staging, target)  # the pack first, then the virtualenv its new version uses
            if requirements:
                _replace(fresh, venv)
            else:  # no requirements any more: nothing can have failed
                (venv / FAILED_REQUIREMENTS_FILE).unlink(missing_ok=True)
        finally:
            _delete(staging)
            _delete(fresh)
    return [need.warning(target, need.requirement not in failed) for need in unlisted]


# -- locks and swaps ---------------------------------------------------------------------------------


def _open_lock(folder: Path, ref: str) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    return os.open(folder / f".{ref}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)


@contextlib.contextmanager
def _pack_lock(folder: Path, ref: str, progress: Progress) -> Iterator[None]:
    """Hold `<folder>/.<ref>.lock` (an flock, gone with the process) for a whole install or removal:
    a second one waits for the first instead of sharing its staging folder and virtualenv. The file
    stays: deleting a lock file that others may have open races."""
    fd = _open_lock(folder, ref)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"waiting for another install or removal of {ref} to finish (it holds {folder / f'.{ref}.lock'})")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


#: What an interrupted install leaves in the packs folder (`.<ref>.installing`) and in the virtualenvs
#: folder (`<ref>.new`), and in either (where the file system cannot swap two folders) `.<ref>.replaced`.
_LEFTOVERS = (re.compile(r"^\.(?P<ref>[a-z0-9_]+)\.(installing|replaced)$"),
              re.compile(r"^(?P<ref>[a-z0-9_]+)\.new$|^\.(?P<old>[a-z0-9_]+)\.replaced$"))


def _clear_leftovers(install_path: Path, virtualenvs: Path, ref: str) -> None:
    """Delete what interrupted installs left, of this pack (whose lock is held) and of every other
    pack no install holds now. A replaced folder whose successor is missing (a crash between two
    renames) is put back instead."""
    found: dict[str, list[Path]] = {}
    for folder, pattern in zip((install_path, virtualenvs), _LEFTOVERS, strict=True):
        with contextlib.suppress(OSError):
            for name in sorted(os.listdir(folder)):
                if match := pattern.match(name):
                    found.setdefault(match["ref"] or match.groupdict().get("old") or "", []).append(folder / name)
    for owner, paths in found.items():
        if owner == ref:
            _clear(paths)
            continue
        fd = _open_lock(install_path, owner)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _clear(paths)
        except BlockingIOError:
            continue  # its install runs now
        finally:
            os.close(fd)


def _clear(paths: list[Path]) -> None:
    for path in paths:
        live = path.with_name(path.name[1:-len(".replaced")]) if path.name.endswith(".replaced") else None
        if live is not None and not os.path.lexists(live):
            path.rename(live)
        else:
            _delete(path)


def _delete(path: Path) -> None:
    """Delete a folder (a link or file: only itself), if it is there."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


def _replace(new: Path, live: Path) -> None:
    """Put the folder `new` at `live` in one step, then delete what was there: a crash at any point
    leaves the old folder or the new one at `live`. One atomic exchange where the file system has it;
    elsewhere two renames, and a crash between them leaves `.<name>.replaced`, which the next install
    puts back."""
    if not os.path.lexists(live):
        new.rename(live)
        return
    if not _exchange(new, live):
        old = live.with_name(f".{live.name}.replaced")
        _delete(old)
        live.rename(old)
        new.rename(live)
        new = old
    _delete(new)  # what was live


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _renameat2() -> Callable[..., int] | None:
    return libc.function("renameat2", (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint),
                         ctypes.c_int)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically (Linux's renameat2 with RENAME_EXCHANGE); False where the C library
    or the file system cannot."""
    call = _renameat2()
    if call is None:
        return False
    if call(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(first), None, str(second))


def _relocate(built: Path, final: Path) -> None:
    """Make a virtualenv built at `built` right at `final`, where it is moved: its scripts' `#!`
    lines, `activate` and pyvenv.cfg name the folder it was built in (its interpreter finds its
    folder by itself)."""
    old, new = os.fsencode(built), os.fsencode(final)
    bin_folder = built / "bin"
    for file in [built / "pyvenv.cfg", *(bin_folder.iterdir() if bin_folder.is_dir() else [])]:
        if file.is_symlink() or not file.is_file():
            continue
        data = file.read_bytes()
        if old in data and b"\0" not in data:  # text only: a binary keeps its bytes
            file.write_bytes(data.replace(old, new))


def remove_pack(ref: str, registry: Registry, virtualenvs: Path, progress: Progress, *,
                install_path: Path | None = None) -> Path:
    """Delete an installed pack's folder and virtualenv; system packs stay.

    A pack linked into the packs folder (a checkout being developed) loses only the link: what it
    points to stays. A pack that does not load (its pack.yaml no longer parses) is removed all the
    same, as st2's packs.delete removes it: its folder of that name in `install_path`. An install of
    the pack running now is waited for."""
    path = _removable(ref, registry, install_path, progress)
    with _pack_lock(path.parent, ref, progress):
        if path.is_symlink():
            progress(f"removing the link {path} (what it points to, {os.readlink(path)}, stays)")
            path.unlink()
        elif path.exists():
            progress(f"removing {path}")
            shutil.rmtree(path)
        else:
            progress(f"{path} is gone already")
        if ref in REPLACEABLE_PACKS:
            progress(f"the {ref} pack shipped with Squall is used again")
        venv = virtualenvs / ref
        if os.path.lexists(venv):
            progress(f"removing virtualenv {venv}")
            _delete(venv)
    return path


def _removable(ref: str, registry: Registry, install_path: Path | None, progress: Progress) -> Path:
    """The folder `remove_pack` deletes: the pack loaded as `ref`, else the folder `install_path/ref` of a
    pack that does not load (a shipped linux pack loads in place of a broken replacement); never a
    system pack, nor anything in the shipped packs' folder."""
    if ref in SYSTEM_PACKS:
        raise PackInstallError(f"'{ref}' is a system pack shipped with Squall and cannot be removed")
    pack = registry.packs.get(ref)
    if pack is not None and not pack.system:
        return pack.path
    folder = _unloaded_folder(ref, install_path)
    if folder is not None:
        progress(f"{ref} did not load (`squall pack list` says why); removing its folder {folder} all the same")
        return folder
    if pack is not None:
        raise PackInstallError(f"'{ref}' is a system pack shipped with Squall and cannot be removed")
    raise PackInstallError(f"pack '{ref}' is not installed; installed: {', '.join(sorted(registry.packs))}")


def _unloaded_folder(ref: str, install_path: Path | None) -> Path | None:
    """`install_path/ref` when it is there (a folder, or a link: only the link goes) and `ref` is a pack's
    name, so that nothing outside `install_path` and nothing shipped with Squall can be named."""
    if install_path is None or not PACK_REF.match(ref):
        return None
    folder = install_path / ref
    if folder.is_symlink():
        return folder
    real, shipped = folder.resolve(), SYSTEM_PACKS_PATH.resolve()
    if not folder.is_dir() or real == shipped or shipped in real.parents or real in shipped.parents:
        return None
    return folder
