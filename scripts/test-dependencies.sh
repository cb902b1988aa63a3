#!/bin/sh
# Installs the Debian packages the tests drive, only those missing: etcdctl (and etcd as the
# reference the parity test and the benchmark compare against), promtool (the alert rules test),
# systemd-analyze (the systemd unit test) and python3-etcd3 (a third-party client over TLS). Runs
# as root without sudo, as a user through sudo when there is one; nothing to do (and no privilege
# needed) when everything is installed.
set -eu
missing=""
need() { command -v "$1" >/dev/null 2>&1 || missing="$missing $2"; }
need etcdctl etcd-client
need etcd etcd-server
need promtool prometheus
need systemd-analyze systemd
# python3-etcd3: a client nobody here wrote, with a password over server TLS (test/e2e/client-tls).
/usr/bin/python3 -c 'import etcd3' >/dev/null 2>&1 || missing="$missing python3-etcd3"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -eq 0 ]; then
  as_root=""
elif command -v sudo >/dev/null 2>&1; then
  as_root="sudo"
else
  echo "test-dependencies: missing Debian packages:$missing; install them as root: apt-get install -y$missing" >&2
  exit 1
fi
echo "test-dependencies: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
$as_root apt-get update -qq
# --no-install-recommends: prometheus would otherwise pull in exporters the tests never use.
# shellcheck disable=SC2086
$as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
