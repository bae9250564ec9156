"""Installing and removing packs: copy or clone, validate, and build the pack's virtualenv.

Long steps report progress through a callback, so the CLI (and later the API) can show it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.packs import REPLACEABLE_PACKS, SYSTEM_PACKS, Pack, Registry, load_pack
from engine.yamlfile import ContentError

Progress = Callable[[str], None]


class PackInstallError(Exception):
    """A pack that cannot be installed or removed; the message says why and what to do."""


def _is_git(source: str) -> bool:
    return "://" in source or source.startswith("git@") or source.endswith(".git")


def _fetch(source: str, workdir: Path, progress: Progress) -> Path:
    if _is_git(source):
        ref = None
        if "=" in source.rsplit("/", 1)[-1]:
            source, ref = source.rsplit("=", 1)
        target = workdir / "clone"
        progress(f"cloning {source}" + (f" at {ref}" if ref else ""))
        command = ["git", "clone", "--quiet", *([] if ref else ["--depth", "1"]), source, str(target)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise PackInstallError(f"git clone {source} failed: {done.stderr.strip()}")
        if ref:
            checkout = subprocess.run(["git", "-C", str(target), "checkout", "--quiet", ref],
                                      capture_output=True, text=True)
            if checkout.returncode != 0:
                raise PackInstallError(f"git checkout {ref} failed: {checkout.stderr.strip()}")
        return target
    folder = Path(source).expanduser().resolve()
    if not folder.is_dir():
        raise PackInstallError(f"{source} is neither a folder nor a git URL")
    return folder


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

    def summary(self) -> str:
        """`requirement psycopg2==2.8 failed to build: pg_config executable not found`."""
        return f"requirement {self.requirement} {self.problem}: {self.reason}"

    def paragraph(self, pack: str, requirements: Path) -> str:
        """The whole story in one paragraph, for `squall pack install`."""
        where = f"line {self.line} of {requirements}" if self.line else str(requirements)
        return (f"requirement {self.requirement} ({where}) {self.problem}: {self.reason}. The pack {pack} is "
                f"installed with its other requirements, but its Python actions that import this one fail "
                f"until it is fixed: {self.advice}.")

    @property
    def advice(self) -> str:
        """What to do, then install again."""
        return f"{self.fix}, then {self.again}"

    def document(self) -> dict[str, Any]:
        return {"requirement": self.requirement, "line": self.line, "problem": self.problem,
                "reason": self.reason, "advice": self.advice}

    def record(self) -> dict[str, Any]:
        """What the virtualenv folder keeps (`failed_requirements` reads it back)."""
        return {"requirement": self.requirement, "line": self.line, "problem": self.problem,
                "reason": self.reason, "fix": self.fix, "again": self.again}


def build_virtualenv(pack: str, requirements: Path, venv: Path, progress: Progress, *,
                     shown_as: Path | None = None, source: str | None = None) -> list[RequirementFailure]:
    """A fresh virtualenv for the pack with its requirements installed (replaces an old one).

    Returns the requirement lines that could not be installed, also recorded in the virtualenv
    folder (`FAILED_REQUIREMENTS_FILE`), so the pack's Python actions can say why an import fails.
    `shown_as` is where people will find the requirements file (the installed copy, not the staging
    one) and `source` what to install again; both only word the advice.
    """
    progress(f"creating virtualenv {venv}")
    if venv.exists():
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    created = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
    if created.returncode != 0:
        raise PackInstallError(f"cannot create a virtualenv for {pack}: {created.stderr.strip()}")
    progress(f"installing {requirements.name} of {pack}")
    code, output = _pip_install(venv, requirements, progress)
    if code == 0:
        return []
    # pip installs nothing when one requirement fails, so one line at a time now: the others are
    # installed and each failing line is named with its own reason.
    progress(f"pip could not install {requirements.name} as a whole; installing its requirements one at a time")
    failures = _install_line_by_line(venv, requirements, progress, shown_as or requirements, source)
    if not failures:  # every line installs alone, not together: conflicting pins
        failures = [RequirementFailure(
            requirement=requirements.name, line=0, problem="could not be installed as a whole",
            reason=pip_reason(output) or "pip failed without saying why",
            fix=f"make the pins in {shown_as or requirements} agree with each other", again=_again(source))]
    record = {"pack": pack, "requirements": str(shown_as or requirements),
              "failed": [failure.record() for failure in failures]}
    (venv / FAILED_REQUIREMENTS_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return failures


def _pip_install(venv: Path, requirements: Path, progress: Progress) -> tuple[int, str]:
    """Run the virtualenv's pip on a requirements file (from its folder, where relative paths point)."""
    process = subprocess.Popen(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
         "--no-input", "-r", str(requirements)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(requirements.parent),
    )
    lines: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        line = line.rstrip()
        lines.append(line)
        if line.startswith(("Collecting", "Processing", "Successfully", "Installing")):
            progress("  " + line)
    return process.wait(), "\n".join(lines)


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


def _install_line_by_line(venv: Path, requirements: Path, progress: Progress, shown_as: Path,
                          source: str | None) -> list[RequirementFailure]:
    """Install each requirement line alone (with the file's options); the lines that fail, explained.

    Each line goes through a requirements file of its own beside the original, so relative paths,
    `-r` includes and per-line options (`--hash`, markers) mean what they meant there."""
    options, lines = requirement_lines(requirements.read_text(errors="replace"))
    failures: list[RequirementFailure] = []
    single = requirements.parent / f".squall-requirement-{os.getpid()}.txt"
    try:
        for index, (number, line) in enumerate(lines, start=1):
            progress(f"requirement {index}/{len(lines)}: {line}")
            single.write_text("\n".join([*options, line]) + "\n")
            code, output = _pip_install(venv, single, progress)
            if code == 0:
                continue
            reason = pip_reason(output, single.name, requirements.name) or "pip failed without saying why"
            failure = RequirementFailure(line, number, _problem(output), reason,
                                         _fix(reason, output, shown_as), _again(source))
            progress(f"  {failure.summary()}")
            failures.append(failure)
    finally:
        single.unlink(missing_ok=True)
    return failures


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


def _fix(reason: str, output: str, requirements: Path) -> str:
    """What to do, worded for the cause pip reported."""
    python = f"Python {sys.version_info.major}.{sys.version_info.minor}"
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
    fields = ("requirement", "line", "problem", "reason", "fix", "again")
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


def install_pack(source: str, install_path: Path, configs_path: Path, virtualenvs: Path,
                 progress: Progress) -> tuple[Pack, list[ContentError]]:
    """Install a pack from a folder or git URL into `install_path`; returns it and its content errors."""
    with tempfile.TemporaryDirectory(prefix="squall-pack-") as tmp:
        folder = _fetch(source, Path(tmp), progress)
        if not (folder / "pack.yaml").is_file():
            raise PackInstallError(f"{source} has no pack.yaml at its top; is it a StackStorm pack?")
        probe = Registry()
        pack = load_pack(folder, probe, configs_path, None)
        if pack is None:
            raise PackInstallError("; ".join(str(e) for e in probe.errors) or "pack.yaml is invalid")
        if pack.ref in SYSTEM_PACKS:  # load_pack refuses these names already; kept for a clear message
            raise PackInstallError(f"'{pack.ref}' is a system pack shipped with Squall and cannot be replaced")
        if pack.ref in REPLACEABLE_PACKS:
            progress(f"this {pack.ref} pack replaces the {pack.ref} pack shipped with Squall: {pack.ref}.* actions "
                     f"come from it from now on; `squall pack remove {pack.ref}` brings the shipped one back")
        target = install_path / pack.ref
        progress(f"copying {pack.ref} {pack.version} to {target}")
        install_path.mkdir(parents=True, exist_ok=True)
        staging = install_path / f".{pack.ref}.installing"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(folder, staging, ignore=shutil.ignore_patterns(".git", "__pycache__", "*.pyc"))
        if (staging / "requirements.txt").is_file():
            try:
                # Requirements that cannot be installed do not stop the install: they are recorded in
                # the virtualenv (`failed_requirements`), so the pack's aliases, rules and other
                # actions work while its Python actions say what is missing.
                build_virtualenv(pack.ref, staging / "requirements.txt", virtualenvs / pack.ref, progress,
                                 shown_as=target / "requirements.txt", source=source)
            except PackInstallError:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        else:  # no requirements any more: nothing can have failed
            (virtualenvs / pack.ref / FAILED_REQUIREMENTS_FILE).unlink(missing_ok=True)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    registry = Registry()
    installed = load_pack(target, registry, configs_path, None)
    assert installed is not None
    _, errors = split_missing_config(installed.ref, configs_path, registry.errors)
    return installed, errors


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
    """The config keys still to be set: required by the pack's config schema, without a default,
    not in its config (nested objects as `parent.key`)."""
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
        if spec.get("type") == "object" and isinstance(spec.get("properties"), dict):
            needed.extend(_needed(spec["properties"], values[key], f"{prefix}{key}."))
    return needed


def remove_pack(ref: str, registry: Registry, virtualenvs: Path, progress: Progress) -> Path:
    """Delete an installed pack's folder and virtualenv; system packs stay."""
    pack = registry.packs.get(ref)
    if pack is None:
        raise PackInstallError(f"pack '{ref}' is not installed; installed: {', '.join(sorted(registry.packs))}")
    if pack.system:
        raise PackInstallError(f"'{ref}' is a system pack shipped with Squall and cannot be removed")
    progress(f"removing {pack.path}")
    if ref in REPLACEABLE_PACKS:
        progress(f"the {ref} pack shipped with Squall is used again")
    shutil.rmtree(pack.path)
    venv = virtualenvs / ref
    if venv.exists():
        progress(f"removing virtualenv {venv}")
        shutil.rmtree(venv)
    return pack.path
