"""StackStorm's `st2reactor` as sensors import it: the `Sensor` and `PollingSensor` base classes."""
