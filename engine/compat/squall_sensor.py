"""One StackStorm sensor in its own process (StackStorm's sensor wrapper), supervised by Squall.

The parent sends the sensor's spec as the first JSON line on a private pipe, then trigger
changes (`add_trigger`, `update_trigger`, `remove_trigger`) and answers to datastore calls. The
sensor's `run()` blocks the main thread, so a reader thread takes the parent's messages: it hands
answers to the threads waiting for them and queues trigger changes for a callback thread, which
calls the sensor's methods one at a time, in order. The reader itself never runs sensor code, so
a callback may call the datastore (`sensor_service.get_value`) and still get its answer. SIGTERM
(or the parent going away) runs `cleanup()` and exits with status 143 (128 + SIGTERM); a run()
that returns is told to the parent (`{"op": "returned"}`) before the exit, so the supervisor
restarts a sensor after any other end, an operator's `kill PID` included. Standard library only:
it runs under the pack's virtualenv interpreter.

The reader and callback threads, and the locks they share with the sensor's thread, are made with
`_thread`'s functions taken before the sensor's module is imported: a module that calls
`eventlet.monkey_patch()` (harmless under StackStorm, whose wrapper is green already) replaces
them in place, and as greenthreads the reader's blocking pipe read held up the whole process.

The process is the subreaper of everything its sensor starts (Linux's PR_SET_CHILD_SUBREAPER): a
helper that leaves the sensor's process group (`setsid`, `start_new_session`), even one that daemonises
by forking twice, stays its descendant instead of becoming init's. So when the sensor ends, after
`cleanup()`, every descendant left is killed, and Squall's supervisor finds them all to kill when the
sensor ignores SIGTERM; killing the process group alone missed them.

The parent's death gets the process SIGTERM, not the SIGKILL every other child of Squall's gets:
when `squall serve` is killed outright, the descendants in sessions of their own would be orphans
that no owner file names, so the sensor ends them as it ends anyway. Its reader thread, which sees
the parent's pipe close, makes sure of the end: `PARENT_GONE_GRACE` seconds later it kills them and
exits, whatever the sensor's code does with SIGTERM.
"""

from __future__ import annotations

import _thread
import contextlib
import inspect
import itertools
import logging
import os
import queue
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import squall_paths
from squall_worker import ActionService, Channel, ConfigDict, load_module, prctl
from st2reactor.sensor.base import BaseSensor, PollingSensor

log = logging.getLogger("squall.sensor")
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
#: Seconds a sensor whose parent died has for its `cleanup()` before its descendants and it are killed:
#: the supervisor's default `stop_timeout`.
PARENT_GONE_GRACE = 5.0
TRIGGER_CALLBACKS = ("add_trigger", "update_trigger", "remove_trigger")
#: The real thread and lock makers, taken before any sensor module runs (see the module's docstring):
#: `eventlet.monkey_patch()` swaps these attributes of `_thread` and `threading` for green ones, and
#: `threading.Event` and `threading.Condition` find the swapped lock maker when they wait.
_start_new_thread = _thread.start_new_thread
_allocate_lock = _thread.allocate_lock
_sleep = time.sleep
#: The exit status after SIGTERM, as a shell reports a process the signal ended; never 0, which
#: would read as a sensor that chose to end.
TERMINATED = 128 + signal.SIGTERM


class _Terminated(SystemExit):
    """SIGTERM: unwinds the main thread through the sensor's code, `cleanup()` runs, the exit is 143."""


_terminating = False
#: The thread that runs the sensor's `run()` and Python's signal handlers.
_main_thread = _thread.get_ident()


def _start_thread(function: Callable[..., None], args: tuple[Any, ...]) -> None:
    """Start one of the wrapper's own threads with SIGTERM blocked in it, so that the kernel hands a
    SIGTERM sent to the process to the main thread: Python runs its handler only there, and one
    delivered to a thread of ours left a main thread blocked in a wait (`threading.Event().wait()`)
    asleep, the sensor running on past its stop."""

    def run() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        function(*args)

    _start_new_thread(run, ())


def _terminate(*_: Any) -> None:
    """SIGTERM's handler; once only. A parent's death brings two (its signal and the reader's, which
    sees the pipe close), and a second raised in `cleanup()` or the killing of the descendants after it
    would cut those short."""
    global _terminating
    if not _terminating:
        _terminating = True
        raise _Terminated(TERMINATED)


class _Gate:
    """Closed until `open()`; then `wait()` returns at once. A real lock, whatever the sensor patches."""

    def __init__(self) -> None:
        self._lock = _allocate_lock()
        self._lock.acquire()

    def open(self) -> None:
        self._lock.release()

    def wait(self) -> None:
        with self._lock:
            pass


class SensorService(ActionService):
    """`self.sensor_service`: dispatch, a logger, and the datastore methods of `action_service`."""

    def __init__(self, channel: Channel, pack: str, class_name: str) -> None:
        super().__init__(channel, pack, class_name, "sensor_service")
        self._pack, self._class_name = pack, class_name
        self._send_lock = _allocate_lock()
        self._ids = itertools.count(1)
        #: Guards `_waiting` and `_answers`.
        self._lock = _allocate_lock()
        #: Each datastore call waiting for its answer: the lock its thread blocks on until the reader
        #: releases it (real locks: see `_allocate_lock`).
        self._waiting: dict[int, Any] = {}
        self._answers: dict[int, dict[str, Any]] = {}

    def send(self, message: dict[str, Any]) -> None:
        with self._send_lock:
            self._channel.send(message)

    def answer(self, message: dict[str, Any]) -> None:
        """Called by the reader thread with the parent's answer to a datastore call."""
        with self._lock:
            waiting = self._waiting.pop(message["id"], None)
            if waiting is None:
                return  # nobody waits for it any more
            self._answers[message["id"]] = message
        waiting.release()

    def _call(self, method: str, **arguments: Any) -> Any:
        call_id = next(self._ids)
        waiting = _allocate_lock()
        waiting.acquire()
        with self._lock:
            self._waiting[call_id] = waiting
        self.send({"op": "call", "id": call_id, "method": method, "args": arguments})
        waiting.acquire()  # released by the reader with the answer
        with self._lock:
            reply = self._answers.pop(call_id)
        if reply.get("error"):
            raise RuntimeError(reply["error"])
        return reply.get("result")

    def dispatch(self, trigger: Any, payload: Any = None, trace_tag: str | None = None) -> None:
        """Emit a trigger instance: `trigger` is a type ref, or a trigger dict given to `add_trigger`."""
        parameters = None
        if isinstance(trigger, dict):
            parameters = trigger.get("parameters") or None
            trigger = trigger.get("type") or trigger.get("ref")
        self.send({"op": "dispatch", "trigger": str(trigger), "payload": payload, "parameters": parameters,
                   "trace_tag": trace_tag})

    def dispatch_with_context(self, trigger: Any, payload: Any = None, trace_context: Any = None) -> None:
        tag = trace_context.get("trace_tag") if isinstance(trace_context, dict) else \
            getattr(trace_context, "trace_tag", None)
        self.dispatch(trigger, payload, trace_tag=tag)

    def get_logger(self, name: str) -> logging.Logger:
        return logging.getLogger(f"SensorWrapper.{self._pack}.{self._class_name}.{name}")


def load_sensor_class(path: str, class_name: str) -> type[BaseSensor]:
    cls = getattr(load_module(path, "squall_sensor_"), class_name, None)
    if not inspect.isclass(cls):
        raise ImportError(f"{path} defines no class {class_name}")
    return cls


def make_sensor(cls: type, service: SensorService, config: ConfigDict, poll_interval: float | None) -> Any:
    """Construct the sensor as StackStorm's sensor wrapper does, and a little more forgivingly.

    StackStorm passes `sensor_service` and `config`, plus `poll_interval` only to a `PollingSensor`
    whose metadata sets one (so a subclass whose `__init__` takes no `poll_interval` still runs).
    Beyond StackStorm, as for actions: a constructor that refuses `poll_interval` gets it through
    `set_poll_interval()`, and one that takes only `config` gets `sensor_service` as an attribute.
    """
    kwargs: dict[str, Any] = {"sensor_service": service, "config": config}
    if poll_interval and issubclass(cls, PollingSensor):
        kwargs["poll_interval"] = poll_interval
    late: dict[str, Any] = {}
    while True:
        try:
            sensor = cls(**kwargs)
            break
        except TypeError as exc:
            refused = next((name for name in ("poll_interval", "sensor_service") if name in kwargs
                            and f"unexpected keyword argument '{name}'" in str(exc)), None)
            if refused is None:
                raise
            late[refused] = kwargs.pop(refused)
    if "poll_interval" in late:
        setter = getattr(sensor, "set_poll_interval", None)
        if callable(setter):
            setter(late["poll_interval"])
        else:
            sensor._poll_interval = late["poll_interval"]
    if "sensor_service" in late:
        sensor.sensor_service = sensor._sensor_service = service
    return sensor


def _read(channel: Channel, service: SensorService, callbacks: queue.SimpleQueue[dict[str, Any]]) -> None:
    """The reader thread: answers to datastore calls, trigger changes (queued for `_call_back`),
    and the end of the parent. It calls no sensor code, so it is free to read the answer to a
    datastore call that a trigger callback makes."""
    while (message := channel.receive()) is not None:
        op = message.get("op")
        if op == "reply":
            try:
                service.answer(message)
            except Exception:  # a malformed answer must not end the only reader
                log.exception("the parent sent an answer the sensor could not take: %r", message)
        elif op in TRIGGER_CALLBACKS:
            callbacks.put(message)
    _start_thread(_end_after_grace, ())  # the parent is gone: clean up and stop, in time
    # To the main thread itself: the parent-death signal may have gone to a thread the sensor started.
    signal.pthread_kill(_main_thread, signal.SIGTERM)


def _end_after_grace() -> None:
    """The end of a sensor whose parent is gone, should its SIGTERM not end it (a handler of the
    sensor's own, a main thread stuck in a call): its descendants killed, then the process."""
    _sleep(PARENT_GONE_GRACE)
    _end_descendants()
    os._exit(TERMINATED)


def _call_back(sensor: BaseSensor, callbacks: queue.SimpleQueue[dict[str, Any]], ready: _Gate) -> None:
    """The callback thread: the sensor's `add_trigger`/`update_trigger`/`remove_trigger`, in the
    order the parent sent them, after the triggers it started with were added."""
    ready.wait()
    while True:
        message = callbacks.get()
        op = message["op"]
        # The sensor's code runs with SIGTERM as the sensor's main thread has it (`_start_thread` blocked it
        # here for the wait): a signal mask is inherited by the threads and processes it starts, and survives
        # exec, so a helper started in add_trigger could not be stopped with SIGTERM.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        try:
            getattr(sensor, op)(message["trigger"])
        except Exception:
            log.exception("%s failed in the sensor", op)
        finally:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid`, from /proc's children lists (empty where the kernel keeps none).
    Squall's supervisor has the same walk (`engine.processes.descendants`): this file imports nothing
    of Squall's engine, as it runs under the pack's interpreter."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            threads = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for thread in threads:
            try:
                with open(f"/proc/{parent}/task/{thread}/children") as f:
                    children = [int(child) for child in f.read().split()]
            except (OSError, ValueError):
                continue
            found.extend(children)
            todo.extend(children)
    return found


def _end_descendants() -> None:
    """Kill what the sensor started and left, its own process group's or not (see the module's docstring)."""
    for pid in descendants(os.getpid()):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


class _Relayed(logging.Formatter):
    """A record as Squall's reader of this process's output takes it (`engine.sensors._line_level`): its
    first line names its level, and the lines of a multi-line message follow indented by a space, which
    the reader gives the record's level. Unindented, they read as the sensor's own prints (INFO), and a
    warning's second line lost its level. A traceback is added after, as it is: its lines mark an error."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return super().formatMessage(record).replace("\n", "\n ")


def main() -> None:
    if prctl is not None:
        prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        # SIGTERM in place of the SIGKILL Squall set: see the module's docstring. If the parent died
        # before this, its pipe is closed already, and the reader ends the process the same way.
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    channel = Channel(int(sys.argv[1]), int(sys.argv[2]))
    squall_paths.install_from_environment()
    # Unlike an action's wrapper, StackStorm's sensor wrapper configures the root logger (its sensor
    # container's logging config: handlers at INFO), so libraries' INFO lines show and their DEBUG lines
    # (urllib3's request lines, an API key in a query string) do not. Squall relays these to its log.
    relayed = logging.StreamHandler(sys.stderr)
    relayed.setFormatter(_Relayed("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[relayed])
    spec = channel.receive()
    if spec is None:
        return
    signal.signal(signal.SIGTERM, _terminate)
    service = SensorService(channel, spec["pack"], spec["class_name"])
    callbacks: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
    ready = _Gate()
    _start_thread(_read, (channel, service, callbacks))
    cls = load_sensor_class(spec["file"], spec["class_name"])
    if _eventlet_patched():
        log.warning("the sensor's module monkey-patched threading with eventlet: its add_trigger, update_trigger "
                    "and remove_trigger run on a real thread of Squall's, not a greenthread beside run(), so a "
                    "lock, event or queue they share with run() (green now) does not wake it; share plain data "
                    "that run() polls instead")
    sensor = make_sensor(cls, service, ConfigDict(spec.get("config") or {}), spec.get("poll_interval"))
    _start_thread(_call_back, (sensor, callbacks, ready))
    _run(sensor, spec, service, ready.open)


def _eventlet_patched() -> bool:
    """Whether the sensor's module ran `eventlet.monkey_patch()` with threads patched."""
    is_patched = getattr(sys.modules.get("eventlet.patcher"), "is_monkey_patched", None)
    return bool(is_patched is not None and is_patched("thread"))


def _run(sensor: BaseSensor, spec: dict[str, Any], service: SensorService, started: Callable[[], None]) -> None:
    """The sensor's life: setup(), the triggers it starts with, run(), then cleanup() however run()
    ended. A run() that returns is told to the parent: it alone ends the sensor for good."""
    try:
        sensor.setup()
        for trigger in spec.get("triggers") or []:
            sensor.add_trigger(trigger)
        started()  # the changes since the spec was sent come after the triggers it named
        service.send({"op": "running", "pid": os.getpid()})
        sensor.run()
        service.send({"op": "returned"})
    finally:
        try:
            sensor.cleanup()
        except Exception:
            log.exception("cleanup() failed")
        _end_descendants()
        sys.stdout.flush()
        sys.stderr.flush()


if __name__ == "__main__":
    main()
