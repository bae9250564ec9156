"""`chat.flood`: at most so many commands per person in a sliding window (`FloodGate`), checked by the
dispatcher before a command is matched or stored. Why: a platform posts a channel's replies at its own
pace (Slack about one a second, IRC about two lines), so one person's burst held everyone's answers in
that channel behind it (Limnoria's `supybot.abuse.flood.command` is the peer's answer)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Flooded:
    """A command `FloodGate` refused: how long until its sender may run one again, and whether this is
    the first refusal since their last command ran, or for a window (said and audited; the later ones
    are dropped without a word)."""

    wait: float
    tell: bool


@dataclass(slots=True)
class _Sender:
    """One person's commands in the window (monotonic times, oldest first) and until when a refusal
    goes unsaid, having been said once (0: the next refusal is said)."""

    times: deque[float]
    quiet_until: float = 0.0


class FloodGate:
    """`chat.flood`: at most `commands` commands per person (adapter and user: the same name on two
    platforms may be two people) in any `seconds`, a sliding window. A platform posts a channel's
    replies at its pace (Slack: about one a second, IRC: about two lines), so one person's burst
    held everyone's answers there behind it; past the limit a command is dropped before it is
    matched or stored. Only commands run count: a dropped one does not, so the wait said is the
    true one (the oldest command leaving the window). A refusal is said once per command run (the
    first after one ran), or once per window while none runs. Memory: at most `commands` times per
    person, and people idle for a window are forgotten (`_sweep`, once a window)."""

    def __init__(self, commands: int, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.commands = commands
        self.seconds = seconds
        self.clock = clock
        self._senders: dict[tuple[str, str], _Sender] = {}
        self._swept = clock()

    @property
    def senders(self) -> int:
        """People remembered now (who sent a command in about the last window or two)."""
        return len(self._senders)

    def check(self, adapter: str, user: str) -> Flooded | None:
        """Count a command of `user` on `adapter` now: None when it may run, else `Flooded`."""
        now = self.clock()
        if now - self._swept >= self.seconds:
            self._sweep(now)
        sender = self._senders.get((adapter, user))
        if sender is None:
            sender = self._senders[adapter, user] = _Sender(deque(maxlen=self.commands))
        times = sender.times
        while times and times[0] <= now - self.seconds:
            times.popleft()
        if len(times) < self.commands:
            times.append(now)
            # A command ran: the next refusal is news (someone who waited as told and is refused again
            # was dropped without a word for the rest of the first refusal's window).
            sender.quiet_until = 0.0
            return None
        tell = now >= sender.quiet_until
        if tell:
            sender.quiet_until = now + self.seconds
        return Flooded(times[0] + self.seconds - now, tell)

    def _sweep(self, now: float) -> None:
        """Forget the people whose last command left the window and whose refusal's quiet is over."""
        self._swept = now
        horizon = now - self.seconds
        idle = [key for key, sender in self._senders.items()
                if (not sender.times or sender.times[-1] <= horizon) and sender.quiet_until <= now]
        for key in idle:
            del self._senders[key]
