"""`noop`: succeeds at once; the cheapest way to measure the engine itself."""

from engine.runners import RunOutcome, RunRequest


class NoopRunner:
    async def run(self, request: RunRequest) -> RunOutcome:
        return RunOutcome("succeeded", {"failed": False, "succeeded": True, "return_code": 0})
