"""One StackStorm sensor in its own process (StackStorm's sensor wrapper), supervised by Squall.

The parent sends the sensor's spec as the first JSON line on a private pipe, then trigger
changes (`add_trigger`, `update_trigger`, `remove_trigger`) and answers to datastore calls. The
sensor's `run()` blocks the main thread, so a reader thread takes the parent's messages: it hands
answers to the threads waiting for them and queues trigger changes for a callback thread, which
calls the sensor's methods one at a time, in order. The reader itself never runs sensor code, so
a callback may call the datastore (`sensor_service.get_value`) and still get its answer. SIGTERM
(or the parent going away) runs `cleanup()` and exits. Standard library only: it runs under the
pack's virtualenv interpreter.

The process is the subreaper of everything its sensor starts (Linux's PR_SET_CHILD_SUBREAPER): a
helper that leaves the sensor's process group (`setsid`, `start_new_session`), even one that daemonises
by forking twice, stays its descendant instead of becoming init's. So when the sensor ends, after
`cleanup()`, every descendant left is killed, and Squall's supervisor finds them all to kill when the
sensor ignores SIGTERM; killing the process group alone missed them.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import logging
import os
import queue
import signal
import sys
import threading
from typing import Any

import squall_paths
from squall_worker import ActionService, Channel, ConfigDict, load_module, prctl
from st2reactor.sensor.base import BaseSensor, PollingSensor

log = logging.getLogger("squall.sensor")
_PR_SET_CHILD_SUBREAPER = 36
TRIGGER_CALLBACKS = ("add_trigger", "update_trigger", "remove_trigger")


class SensorService(ActionService):
    """`self.sensor_service`: dispatch, a logger, and the datastore methods of `action_service`."""

    def __init__(self, channel: Channel, pack: str, class_name: str) -> None:
        super().__init__(channel, pack, class_name, "sensor_service")
        self._pack, self._class_name = pack, class_name
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._waiting: dict[int, dict[str, Any]] = {}
        self._answered = threading.Condition()

    def send(self, message: dict[str, Any]) -> None:
        with self._send_lock:
            self._channel.send(message)

    def answer(self, message: dict[str, Any]) -> None:
        """Called by the reader thread with the parent's answer to a datastore call."""
        with self._answered:
            self._waiting[message["id"]] = message
            self._answered.notify_all()

    def _call(self, method: str, **arguments: Any) -> Any:
        call_id = next(self._ids)
        self.send({"op": "call", "id": call_id, "method": method, "args": arguments})
        with self._answered:
            self._answered.wait_for(lambda: call_id in self._waiting)
            reply = self._waiting.pop(call_id)
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
    os.kill(os.getpid(), signal.SIGTERM)  # the parent is gone: clean up and stop


def _call_back(sensor: BaseSensor, callbacks: queue.SimpleQueue[dict[str, Any]], ready: threading.Event) -> None:
    """The callback thread: the sensor's `add_trigger`/`update_trigger`/`remove_trigger`, in the
    order the parent sent them, after the triggers it started with were added."""
    ready.wait()
    while True:
        message = callbacks.get()
        op = message["op"]
        try:
            getattr(sensor, op)(message["trigger"])
        except Exception:
            log.exception("%s failed in the sensor", op)


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


def main() -> None:
    if prctl is not None:
        prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    channel = Channel(int(sys.argv[1]), int(sys.argv[2]))
    squall_paths.install_from_environment()
    # Unlike an action's wrapper, StackStorm's sensor wrapper configures the root logger (its sensor
    # container's logging config: handlers at INFO), so libraries' INFO lines show and their DEBUG lines
    # (urllib3's request lines, an API key in a query string) do not. Squall relays these to its log.
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    spec = channel.receive()
    if spec is None:
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    cls = load_sensor_class(spec["file"], spec["class_name"])
    service = SensorService(channel, spec["pack"], spec["class_name"])
    sensor = make_sensor(cls, service, ConfigDict(spec.get("config") or {}), spec.get("poll_interval"))
    callbacks: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
    ready = threading.Event()
    threading.Thread(target=_read, args=(channel, service, callbacks), name="squall-sensor-reader",
                     daemon=True).start()
    threading.Thread(target=_call_back, args=(sensor, callbacks, ready), name="squall-sensor-callbacks",
                     daemon=True).start()
    try:
        sensor.setup()
        for trigger in spec.get("triggers") or []:
            sensor.add_trigger(trigger)
        ready.set()  # the changes since the spec was sent come after the triggers it named
        service.send({"op": "running", "pid": os.getpid()})
        sensor.run()
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
