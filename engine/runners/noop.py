"""`noop`: succeeds at once; the cheapest way to measure the engine itself."""

from engine.runners import RunOutcome, RunRequest

_SUCCEEDED = {"failed": False, "succeeded": True, "return_code": 0}


class NoopRunner:
    async def run(self, request: RunRequest) -> RunOutcome:
        return self.run_at_once()

    def run_at_once(self) -> RunOutcome:
        """Nothing to wait for, no effect outside the store, and an outcome nothing it is asked changes: the
        engine runs and ends such a request in the call that stores it, without building its run request
        (`ExecutionService._end_at_once`)."""
        return RunOutcome("succeeded", dict(_SUCCEEDED))
