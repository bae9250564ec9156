"""The garbage collector around a start (bot/heap.py): held off while the process starts, then the heap
frozen without a full collection; a reload's settle collects what the start left behind.

Each case runs in a fresh interpreter: freezing or disabling the collector in the test process would
change every later test's memory."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_start_that_held_the_collector_freezes_its_heap_as_it_stands_and_collects_again_afterwards() -> None:
    out = _run("""
        import gc, weakref
        from bot.heap import YOUNG_OBJECTS, collections_held, settle_heap

        class Node:
            pass

        with collections_held():
            assert not gc.isenabled()
            cycle = Node(); cycle.me = cycle  # garbage only the cyclic collector frees
            left = weakref.ref(cycle); del cycle
            settle_heap()  # serve is up: frozen without a full collection
            print(gc.isenabled(), gc.get_threshold()[0] == YOUNG_OBJECTS, gc.get_freeze_count() > 0,
                  left() is not None)
            later = Node(); later.me = later
            gone = weakref.ref(later); del later
            gc.collect()  # what came after the start is collected as ever
            print(gone() is None, left() is not None)
            settle_heap()  # a reload: unfrozen, collected, frozen again
            print(left() is None, gc.isenabled())
    """)
    assert out.splitlines() == ["True True True True", "True True", "True True"]


def test_settling_a_heap_no_start_held_collects_first_and_leaves_the_collector_as_it_was() -> None:
    out = _run("""
        import gc, weakref
        from bot.heap import settle_heap

        class Node:
            pass

        for enabled in (True, False):  # a host (errbot) may run its collector or not
            (gc.enable if enabled else gc.disable)()
            cycle = Node(); cycle.me = cycle
            left = weakref.ref(cycle); del cycle
            settle_heap()  # squall serve run in-process (errbot's plugin, the tests): nothing held
            print(left() is None, gc.isenabled() == enabled, gc.get_freeze_count() > 0)
    """)
    assert out.splitlines() == ["True True True", "True True True"]


def test_a_start_that_fails_before_it_serves_leaves_the_collector_as_it_was(tmp_path: Path) -> None:
    """`squall worker` run in-process (as the CLI tests do) on a config it refuses: it exits 2 before it
    settles the heap, and the process goes on with its collector running."""
    (tmp_path / "config.yml").write_text("adapters: {console: {enabled: false}}\n")
    out = _run(f"""
        import gc, os
        from typer.testing import CliRunner
        from bot.cli import app

        os.chdir({str(tmp_path)!r})
        done = CliRunner().invoke(app, ["-c", "config.yml", "worker"])
        said = " ".join(done.output.split())  # rich wraps the message at the terminal's width
        print(done.exit_code, "executor.kind: procrastinate" in said, gc.isenabled())
        try:
            from bot.heap import collections_held
            with collections_held():
                raise RuntimeError("the start failed")
        except RuntimeError:
            pass
        print(gc.isenabled())
    """)
    assert out.splitlines() == ["2 True True", "True"]
