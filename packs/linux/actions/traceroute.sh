#!/usr/bin/env bash
# traceroute HOST [HOPS] [QUERIES]; a host starting with '-' is refused so it cannot be an option.
host="$1"
hops="${2:-30}"
queries="${3:-3}"
if [[ "$host" == -* || -z "$host" ]]; then
    echo "host must be given and may not start with '-'" >&2
    exit 2
fi
if ! command -v traceroute >/dev/null; then
    echo "Unable to find traceroute binary in PATH (install the traceroute package)" >&2
    exit 2
fi
exec traceroute -q "$queries" -m "$hops" "$host"
