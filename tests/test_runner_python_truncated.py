"""A python-script action's output past `OUTPUT_LIMIT` is cut and the result says so in `truncated`, in
the shell runner's words (`tests/test_runner_shell.py::test_output_over_the_limit_is_cut_and_says_so`):
the python runner cut stdout at 8 MiB without a word, so a cut output looked whole."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bot.app import Squall
from engine.runners import OUTPUT_LIMIT
from tests.conftest import write

PACK = "pyprint"


@pytest.fixture
def home(home: Path) -> Path:
    """The conftest home plus a pack whose action prints `size` bytes to stdout and a line to stderr."""
    pack = home / "packs" / PACK
    write(pack / "pack.yaml", f"""
        name: {PACK}
        description: python runner output limit test pack
        version: 0.1.0
        author: tests
    """)
    write(pack / "actions" / "emit.py", """
        import sys

        from st2common.runners.base_action import Action


        class Emit(Action):
            def run(self, size):
                sys.stdout.write("a" * size)
                sys.stdout.flush()
                sys.stderr.write("fine")
                return True
    """)
    write(pack / "actions" / "emit.yaml", """
        name: emit
        runner_type: python-script
        entry_point: emit.py
        parameters:
          size: {type: integer, required: true}
    """)
    return home


async def _emit(app: Squall, size: int) -> dict[str, Any]:
    record = await app.executions.request(f"{PACK}.emit", {"size": size})
    done = await app.executions.wait(record["id"], timeout=60)
    assert done["status"] == "succeeded", done["result"]
    return done["result"]


async def test_stdout_over_the_limit_is_cut_and_says_so(squall: Squall) -> None:
    result = await _emit(squall, OUTPUT_LIMIT + 10)
    assert len(result["stdout"]) == OUTPUT_LIMIT
    assert result["stderr"] == "fine"
    assert result["truncated"] == f"stdout was cut at {OUTPUT_LIMIT} bytes"


async def test_stdout_of_exactly_the_limit_is_whole(squall: Squall) -> None:
    result = await _emit(squall, OUTPUT_LIMIT)
    assert len(result["stdout"]) == OUTPUT_LIMIT
    assert "truncated" not in result


def test_truncated_names_each_stream_cut_and_only_those(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.runners.python as python

    monkeypatch.setattr(python, "OUTPUT_LIMIT", 100)
    (tmp_path / "out").write_bytes(b"x" * 100)
    (tmp_path / "err").write_bytes(b"y" * 250)
    out, out_cut = python._read_capture(tmp_path / "out", None)
    err, err_cut = python._read_capture(tmp_path / "err", None)
    assert (out, out_cut) == ("x" * 100, False) and (err, err_cut) == ("y" * 100, True)
    from engine.runners import truncation  # the one wording

    assert truncation(["stderr"], 100) == "stderr was cut at 100 bytes"
    assert truncation(["stdout", "stderr"], 100) == "stdout and stderr were cut at 100 bytes each"
    assert truncation([], 100) is None
