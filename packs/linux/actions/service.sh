#!/usr/bin/env bash
# Runs ACTION on SERVICE with systemctl where systemd runs, else with service(8).
# StackStorm's version picks by distribution name; asking what init runs works on any distribution.
# Both values arrive as separate arguments, so nothing in them is shell; a leading '-' is refused
# so neither can become an option of systemctl or service.
act="$1"
name="$2"
if [[ -z "$act" || -z "$name" ]]; then
    echo "usage: service.sh ACTION SERVICE" >&2
    exit 2
fi
if [[ "$act" == -* || "$name" == -* ]]; then
    echo "action and service may not start with '-'" >&2
    exit 2
fi
if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
    echo "Using systemctl"
    exec systemctl "$act" "$name"
elif command -v service >/dev/null; then
    echo "Using service"
    exec service "$name" "$act"
elif [[ -x "/etc/init.d/$name" ]]; then
    exec "/etc/init.d/$name" "$act"
fi
echo "Unknown service: neither systemctl, service nor /etc/init.d/$name is available" >&2
exit 2
