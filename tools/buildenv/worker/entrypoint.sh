#!/bin/bash
# The worker image's entrypoint: one buildbox worker, configured from environment variables
# (README.md "Remote execution" shows how to run it on ECS or EKS):
#
#   BUILDGRID_URL      the BuildGrid server, e.g. http://buildgrid.internal:50051 (required)
#   BUILDGRID_CAS_URL  its CAS, if another address (default: BUILDGRID_URL)
#   WORKER_NAME        unique per worker (default: the host name, which ECS and Kubernetes set)
#   WORKER_BUILDENV    the buildenv platform property (default: this image's, /etc/worker-buildenv)
#   WORKER_ISA         the ISA platform property (default: from `uname -m`)
#   TMPDIR             where actions are staged (default /tmp): room for the largest action
#
# Extra arguments go to buildbox-worker before the name (e.g. --instance=NAME, --verbose).
# The worker exits when its bot session breaks; run it under a restart policy.
set -euo pipefail

if [[ -z "${BUILDGRID_URL:-}" ]]; then
    echo "worker-entrypoint: set BUILDGRID_URL to the BuildGrid server (http://HOST:50051)" >&2
    exit 2
fi
case "$(uname -m)" in
    x86_64) default_isa=x86-64 ;;
    aarch64) default_isa=aarch64 ;;
    *) default_isa="$(uname -m)" ;;
esac
name="${WORKER_NAME:-$(cat /proc/sys/kernel/hostname)}"

exec /usr/bin/buildbox-worker \
    --bots-remote="${BUILDGRID_URL}" \
    --cas-remote="${BUILDGRID_CAS_URL:-${BUILDGRID_URL}}" \
    --buildbox-run=/usr/bin/buildbox-run-hosttools \
    --runner-arg=--disable-localcas \
    --platform OSFamily=linux \
    --platform "ISA=${WORKER_ISA:-${default_isa}}" \
    --platform "buildenv=${WORKER_BUILDENV:-$(cat /etc/worker-buildenv)}" \
    "$@" \
    "${name}"
