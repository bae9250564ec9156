"""`noop`: succeeds at once; the cheapest way to measure the engine itself."""

from engine.runners import RunOutcome, RunRequest

_SUCCEEDED = {"failed": False, "succeeded": True, "return_code": 0}


class NoopRunner:
    async def run(self, request: RunRequest) -> RunOutcome:
        return self.run_at_once(request)

    def run_at_once(self, request: RunRequest) -> RunOutcome:
        """Nothing to wait for and no effect outside the store: the engine runs and ends such a request
        in the call that stores it (`ExecutionService._end_at_once`)."""
        return RunOutcome("succeeded", dict(_SUCCEEDED))
