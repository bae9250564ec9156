"""Installing and removing packs: copy or clone, validate, and build the pack's virtualenv.

Long steps report progress through a callback, so the CLI (and later the API) can show it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
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


def build_virtualenv(pack: str, requirements: Path, venv: Path, progress: Progress) -> None:
    """A fresh virtualenv for the pack with its requirements installed (replaces an old one)."""
    progress(f"creating virtualenv {venv}")
    if venv.exists():
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    created = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
    if created.returncode != 0:
        raise PackInstallError(f"cannot create a virtualenv for {pack}: {created.stderr.strip()}")
    progress(f"installing {requirements.name} of {pack}")
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
    if process.wait() != 0:
        shutil.rmtree(venv, ignore_errors=True)
        tail = "\n".join(lines[-15:])
        raise PackInstallError(f"pip could not install the requirements of {pack}:\n{tail}")


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
                build_virtualenv(pack.ref, staging / "requirements.txt", virtualenvs / pack.ref, progress)
            except PackInstallError:
                shutil.rmtree(staging, ignore_errors=True)
                raise
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
