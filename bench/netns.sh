#!/bin/sh
# Loopback-only network namespace for benchmarks and the interop suite.
# Inside it only `lo` exists, so no packet can leave 127.0.0.1/::1, and the
# suites may bind the fixed ports the reference CLI assumes (80, 5353).
#   sh bench/netns.sh          # create (idempotent; needs root)
#   sh bench/netns.sh delete   # remove
set -e
NS=${DMP_NETNS:-dmpbench}
if [ "$1" = "delete" ]; then ip netns delete "$NS" 2>/dev/null || true; exit 0; fi
ip netns list | grep -qw "$NS" || ip netns add "$NS"
ip netns exec "$NS" ip link set lo up
