"""errbot's side of bench/chat.py: the same three command shapes as Squall's bench aliases.

    !ping                  -> pong
    !bounce nginx on web1  -> bounced nginx on web1      (two arguments)
    !flush redis ttl=30    -> flushed redis (ttl 30)     (an argument and a key=value option)

Each does as little as errbot allows: arguments split by errbot (`split_args_with=None`), the reply
formatted with an f-string, nothing stored (TestBot's storage is in memory).
"""

from __future__ import annotations

from errbot import BotPlugin, botcmd


class BenchCommands(BotPlugin):
    @botcmd
    def ping(self, msg, args):
        return "pong"

    @botcmd(split_args_with=None)
    def bounce(self, msg, args):
        if len(args) != 3 or args[1] != "on":
            return "usage: !bounce SERVICE on HOST"
        return f"bounced {args[0]} on {args[2]}"

    @botcmd(split_args_with=None)
    def flush(self, msg, args):
        options = dict(word.split("=", 1) for word in args[1:] if "=" in word)
        if not args or "ttl" not in options:
            return "usage: !flush CACHE ttl=SECONDS"
        return f"flushed {args[0]} (ttl {int(options['ttl'])})"
