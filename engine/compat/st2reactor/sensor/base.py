"""`st2reactor.sensor.base`: the classes StackStorm sensors derive from, with StackStorm's signatures.

Squall runs each sensor class in its own process (`squall_sensor.py`), as st2sensorcontainer does;
these are the same abstract interface, so sensors written for StackStorm run unmodified.
"""

from __future__ import annotations

import abc
import time
from typing import Any

__all__ = ["PollingSensor", "Sensor"]


class BaseSensor(abc.ABC):
    def __init__(self, sensor_service: Any, config: dict[str, Any] | None = None) -> None:
        self._sensor_service = sensor_service
        self.sensor_service = sensor_service
        self._config = config or {}
        self.config = self._config

    @abc.abstractmethod
    def setup(self) -> None:
        """Run once before `run()`."""

    @abc.abstractmethod
    def run(self) -> None:
        """The sensor's main loop."""

    @abc.abstractmethod
    def cleanup(self) -> None:
        """Run once when the sensor stops."""

    @abc.abstractmethod
    def add_trigger(self, trigger: dict[str, Any]) -> None:
        """A trigger of one of this sensor's types was created (a rule with trigger parameters)."""

    @abc.abstractmethod
    def update_trigger(self, trigger: dict[str, Any]) -> None:
        """A trigger of one of this sensor's types changed."""

    @abc.abstractmethod
    def remove_trigger(self, trigger: dict[str, Any]) -> None:
        """A trigger of one of this sensor's types went away."""


class Sensor(BaseSensor):
    """A passive sensor: `run()` blocks and dispatches as events arrive."""

    @abc.abstractmethod
    def run(self) -> None:
        """Block, dispatching trigger instances through `self.sensor_service.dispatch`."""


class PollingSensor(BaseSensor):
    """A sensor whose `poll()` runs every `poll_interval` seconds."""

    def __init__(self, sensor_service: Any, config: dict[str, Any] | None = None, poll_interval: float = 5) -> None:
        super().__init__(sensor_service=sensor_service, config=config)
        self._poll_interval = poll_interval

    @abc.abstractmethod
    def poll(self) -> None:
        """Look once, dispatching what was found."""

    def run(self) -> None:
        while True:
            self.poll()
            time.sleep(self._poll_interval)

    def get_poll_interval(self) -> float:
        return self._poll_interval

    def set_poll_interval(self, poll_interval: float) -> None:
        self._poll_interval = poll_interval
