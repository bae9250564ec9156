# StackStorm's packs.search and packs.show (contrib/packs/actions/pack_mgmt/search.py, show_remote.py in
# StackStorm/st2, Apache-2.0) read the Exchange's index over the network; Squall has none to read.
"""`packs.search`, `packs.show`: a failure that says why, rather than an empty result that looks like
"no such pack"."""

from st2common.runners.base_action import Action


class ExchangeIndex(Action):
    def run(self, **parameters: str) -> None:
        raise RuntimeError(
            "Squall has no pack index: the StackStorm Exchange index is not reachable from Squall, so packs "
            "cannot be searched or shown from it. Find the pack's git URL (https://exchange.stackstorm.org) and "
            "install it with packs.install (packs: [URL] or [URL=ref]); packs.get shows an installed pack")
