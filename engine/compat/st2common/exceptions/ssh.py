"""`st2common.exceptions.ssh`: the SSH errors pack code built on StackStorm's SSH clients catches."""

__all__ = ["InvalidCredentialsException", "NoHostsConnectedToException"]


class NoHostsConnectedToException(Exception):
    """None of the hosts of a parallel SSH client could be connected to."""


class InvalidCredentialsException(Exception):
    """The credentials given for an SSH connection were refused or unusable."""
