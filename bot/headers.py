"""HTTP header names the API and its clients (the CLI's `bot/cli/client.py`) must agree on, in a
module of their own so the HTTP package and the CLI share them without importing each other."""

from __future__ import annotations

#: On a webhook's 202: the id of the trigger instance stored (StackStorm's body echo stays as it is).
INSTANCE_HEADER = "Squall-Trigger-Instance"
