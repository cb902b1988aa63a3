#!/bin/sh
# Installs the Debian packages the tests drive, only those missing: etcdctl (and etcd as the
# reference the parity test and the benchmark compare against), promtool (the alert rules test),
# systemd-analyze (the systemd unit test), python3-etcd3 (a third-party client over TLS) and
# patroni with PostgreSQL 15 (PostgreSQL HA over the JSON gateway, test/e2e/patroni). Runs
# as root without sudo, as a user through sudo when there is one; nothing to do (and no privilege
# needed) when everything is installed.
set -eu
missing=""
need() { command -v "$1" >/dev/null 2>&1 || missing="$missing $2"; }
need etcdctl etcd-client
need etcd etcd-server
need promtool prometheus
need systemd-analyze systemd
# rsyslogd lives in /usr/sbin, outside a user's PATH.
[ -x /usr/sbin/rsyslogd ] || missing="$missing rsyslog"
# rsyslog-gnutls: rsyslog's TLS driver (test/e2e/audit-sinks).
dpkg-query -W -f '${Status}' rsyslog-gnutls 2>/dev/null | grep -q 'install ok installed' || missing="$missing rsyslog-gnutls"
# rsyslog-relp: rsyslog's RELP input, imrelp (test/e2e/audit-relp).
dpkg-query -W -f '${Status}' rsyslog-relp 2>/dev/null | grep -q 'install ok installed' || missing="$missing rsyslog-relp"
# cc: the soak's slow-disk fault compiles a test-only fsync shim (test/soak/slow-fsync.c).
need cc gcc
# python3-etcd3: a client nobody here wrote, with a password over server TLS (test/e2e/client-tls).
/usr/bin/python3 -c 'import etcd3' >/dev/null 2>&1 || missing="$missing python3-etcd3"
# patroni's package does not pull in a server; the e2e runs PostgreSQL 15 from its Debian path.
need patroni patroni
# python3-idna: only recommended by python3-urllib3, but Patroni's etcd3 client over https needs it
# (without it every request fails, "No module named 'idna'", and Patroni waits on etcd forever).
/usr/bin/python3 -c 'import idna' >/dev/null 2>&1 || missing="$missing python3-idna"
[ -x /usr/lib/postgresql/15/bin/postgres ] || missing="$missing postgresql-15"
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
