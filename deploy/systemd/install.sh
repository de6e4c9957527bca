#!/bin/sh
# Installs sonde as a systemd service: the binary, the unit, and a configuration that is
# kept if one exists. Run as root from the repository after `cargo xtask build`:
#   sudo deploy/systemd/install.sh [path/to/sonde]
# DESTDIR=/some/root installs into a staging tree and leaves systemctl alone.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../../target/release/sonde}
root=${DESTDIR:-}
if [ ! -x "$bin" ]; then
    echo "install.sh: $bin is not an executable: build it first (cargo xtask build)" >&2
    exit 1
fi
install -D -m 0755 "$bin" "$root/usr/local/bin/sonde"
install -D -m 0644 "$here/sonde.service" "$root/etc/systemd/system/sonde.service"
install -d -m 0755 "$root/etc/sonde"
if [ ! -e "$root/etc/sonde/sonde.yaml" ]; then
    install -m 0644 "$here/sonde.yaml" "$root/etc/sonde/sonde.yaml"
    echo "installed /etc/sonde/sonde.yaml (edit it, or set variables in /etc/sonde/sonde.env)"
else
    echo "kept the existing /etc/sonde/sonde.yaml"
fi
if [ ! -e "$root/etc/sonde/sonde.env" ]; then
    install -m 0600 /dev/null "$root/etc/sonde/sonde.env"
fi
for doc in deploy.md configuration.md telemetry.md; do
    if [ -e "$here/../../docs/$doc" ]; then
        install -D -m 0644 "$here/../../docs/$doc" "$root/usr/local/share/doc/sonde/$doc"
    fi
done
if [ -z "$root" ]; then
    systemctl daemon-reload
    systemctl enable --now sonde.service
    systemctl --no-pager --lines=5 status sonde.service
fi
