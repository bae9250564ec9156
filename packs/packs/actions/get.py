# After StackStorm's packs.get (contrib/packs/actions/pack_mgmt/get_installed.py in StackStorm/st2,
# Copyright The StackStorm Authors, Apache License 2.0): the same result, found with Squall's CLI.
"""`packs.get`: the pack as Squall loads it (`squall pack list --json` names its folder), its pack.yaml read
as StackStorm's action reads it. The CLI and git are run with argument lists: the pack name is never shell
text, and it only ever matches a loaded pack's ref."""

import json
import os
import subprocess

import yaml
from st2common.runners.base_action import Action


class GetInstalled(Action):
    def run(self, pack: str, branch: str) -> dict:
        listing = subprocess.run([os.environ["SQUALL_CLI"], "pack", "list", "--json"], capture_output=True,
                                 text=True, check=False)
        if listing.returncode != 0:
            raise RuntimeError(f"squall pack list failed: {listing.stderr.strip()}")
        found = [item for item in json.loads(listing.stdout)["packs"] if item["ref"] == pack]
        if not found:  # as StackStorm's: a pack that is not there is no failure
            return {"pack": None, "git_status": None}
        path = found[0]["path"]
        try:
            with open(os.path.join(path, "pack.yaml")) as manifest:
                details = yaml.safe_load(manifest)
        except (OSError, yaml.YAMLError) as exc:
            raise RuntimeError(f'Pack "{pack}" doesn\'t contain a valid pack.yaml file: {exc}') from exc
        return {"pack": details, "git_status": _git_status(path)}


def _git_status(path: str) -> "str | None":
    """StackStorm's "Status:\\n<first line>\\n\\nRemotes:\\n<urls>" for a git checkout, else None."""
    if not os.path.isdir(os.path.join(path, ".git")):
        return None
    status = subprocess.run(["git", "-C", path, "status"], capture_output=True, text=True, check=False)
    remotes = subprocess.run(["git", "-C", path, "remote", "-v"], capture_output=True, text=True, check=False)
    urls = sorted({line.split()[1] for line in remotes.stdout.splitlines() if len(line.split()) > 1})
    first = status.stdout.split("\n")[0]
    return f"Status:\n{first}\n\nRemotes:\n" + "\n".join(urls)
