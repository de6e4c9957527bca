#!/bin/bash
# Runs inside a guest kernel booted by `cargo xtask kernels`, as root, in a chroot of the
# host's root file system (read-only over 9p, with tmpfs on /tmp and /run). It starts sonde,
# drives real servers with real clients, stops sonde with SIGTERM and leaves what it saw in
# $OUT for xtask to check: spans.json (one span per line), sonde.log, sonde.exit, metrics.txt,
# traffic.txt (what the clients did, as "name count" lines) and propagation.json (what the
# relay's echo service received).
#
# usage: guest.sh SONDE_BINARY OUT_DIR [PG_TEMPLATE]
# (PG_TEMPLATE: a data directory initdb made on the host, since initdb takes minutes under
# emulation; without it PostgreSQL is left out.)
set -u
SONDE=$1
OUT=$2
PG_TEMPLATE=${3:-}
W=/tmp/work
mkdir -p "$W/www" "$W/bb" "$W/nginx"
log() { echo "guest: $*"; }
traffic() { echo "$1 $2" >> "$OUT/traffic.txt"; }
: > "$OUT/traffic.txt"

wait_port() { # port what
    for _ in $(seq 1 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    log "$2 did not start on port $1"
    return 1
}

log "kernel $(uname -r)"
"$SONDE" --print-spans json --quiet --metrics-addr 127.0.0.1:9464 --inject-traceparent true \
    > "$OUT/spans.json" 2> "$OUT/sonde.log" &
SONDE_PID=$!
for _ in $(seq 1 600); do
    grep -q "probes attached" "$OUT/sonde.log" && break
    kill -0 "$SONDE_PID" 2>/dev/null || break
    sleep 0.1
done
if ! grep -q "probes attached" "$OUT/sonde.log"; then
    log "sonde did not attach:"
    cat "$OUT/sonde.log"
    wait "$SONDE_PID"
    echo $? > "$OUT/sonde.exit"
    exit 0
fi
log "sonde attached"

# nginx: five keep-alive requests on one connection, one curl process.
cat > "$W/nginx/nginx.conf" <<CONF
user root;
worker_processes 1;
pid $W/nginx/nginx.pid;
error_log $W/nginx/error.log;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path $W/nginx/body; proxy_temp_path $W/nginx/proxy;
  fastcgi_temp_path $W/nginx/fastcgi; uwsgi_temp_path $W/nginx/uwsgi; scgi_temp_path $W/nginx/scgi;
  server { listen 127.0.0.1:8080; location / { return 200 "ok\n"; } }
  server {
    listen 127.0.0.1:8443 ssl;
    listen 127.0.0.1:8444 ssl;
    ssl_certificate $W/nginx/cert.pem; ssl_certificate_key $W/nginx/key.pem;
    location / { return 200 "secure\n"; }
  }
}
CONF
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 \
    -keyout "$W/nginx/key.pem" -out "$W/nginx/cert.pem" 2>/dev/null
nginx -c "$W/nginx/nginx.conf" && wait_port 8080 nginx && {
    url=http://127.0.0.1:8080/keep
    curl -s -o /dev/null -o /dev/null -o /dev/null -o /dev/null -o /dev/null \
        "$url" "$url" "$url" "$url" "$url" && traffic nginx_keepalive 5
}

# HTTPS: three keep-alive requests to nginx's TLS listener, once sonde has put its uprobes
# on the libssl that nginx maps (it scans new processes each second).
for _ in $(seq 1 100); do
    grep -q "TLS: uprobes on" "$OUT/sonde.log" && break
    sleep 0.1
done
wait_port 8443 "nginx TLS" && {
    url=https://127.0.0.1:8443/tls
    curl -sk -o /dev/null -o /dev/null -o /dev/null "$url" "$url" "$url" \
        && traffic nginx_tls 3
}

# Node's https (OpenSSL linked into node, memory BIOs): three keep-alive requests to the
# second TLS port, after a wait for sonde to attach to the new node process.
if command -v node > /dev/null; then
    node -e "
      const https = require('https');
      const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
      const get = () => new Promise((ok, fail) => https.get({ host: '127.0.0.1', port: 8444,
        path: '/node', agent, rejectUnauthorized: false },
        (r) => { r.resume(); r.on('end', () => ok(r.statusCode)); }).on('error', fail));
      setTimeout(async () => {
        for (let i = 0; i < 3; i++) if (await get() !== 200) process.exit(1);
        agent.destroy();
      }, 2000);" && traffic node_tls 3
fi

# busybox httpd: the parent accepts and forks; the child serves on fd 0 and 1.
echo "hello from busybox" > "$W/bb/index.html"
busybox httpd -f -p 127.0.0.1:8081 -h "$W/bb" &
BB_PID=$!
wait_port 8081 "busybox httpd" && {
    n=0
    for _ in 1 2 3 4 5; do
        curl -s -o /dev/null http://127.0.0.1:8081/index.html && n=$((n + 1))
    done
    traffic busybox_fork $n
    echo "$BB_PID" > "$OUT/busybox.pid"
}

# Redis: 40 SETs one at a time and 40 more in pipelines of 10.
if command -v redis-server > /dev/null; then
    redis-server --port 6390 --bind 127.0.0.1 --save '' --appendonly no --dir "$W" \
        --daemonize yes > /dev/null
    wait_port 6390 redis-server && {
        redis-benchmark -p 6390 -c 1 -n 40 -t set -q > /dev/null && traffic redis_set 40
        redis-benchmark -p 6390 -c 1 -n 40 -P 10 -t get -q > /dev/null && traffic redis_get_pipelined 40
    }
fi

# Trace propagation (sonde runs with --inject-traceparent): three requests through a
# threaded Python service that calls a second one, which answers with the traceparent
# headers it received ($OUT/propagation.json, one answer per line).
RELAY="$(dirname "$0")/../traces/relay.py"
if command -v python3 > /dev/null && [ -f "$RELAY" ]; then
    python3 "$RELAY" echo 127.0.0.1 8091 &
    python3 "$RELAY" front 127.0.0.1 8090 http://127.0.0.1:8091 &
    wait_port 8091 "relay echo" && wait_port 8090 "relay front" && {
        n=0
        for i in 1 2 3; do
            curl -sf "http://127.0.0.1:8090/propagation-$i" >> "$OUT/propagation.json" &&
                echo >> "$OUT/propagation.json" && n=$((n + 1))
        done
        traffic propagation $n
    }
fi

# PostgreSQL: the postmaster accepts and forks a backend per connection; five psql runs.
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2> /dev/null | sort -V | tail -1)
if [ -n "$PGBIN" ] && [ -d "$PG_TEMPLATE" ]; then
    as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
    mkdir -p "$W/pg" && chown postgres: "$W/pg"
    cp -a "$PG_TEMPLATE" "$W/pg/data" &&
    as_pg "$PGBIN/pg_ctl" -D "$W/pg/data" -w -t 120 -l "$W/pg/server.log" \
        -o "-p 5433 -k $W/pg -c listen_addresses=127.0.0.1 -c fsync=off" start > /dev/null && {
        n=0
        for i in 1 2 3 4 5; do
            PGSSLMODE=disable "$PGBIN/psql" -h 127.0.0.1 -p 5433 -U postgres -Atqc "SELECT $i" \
                > /dev/null && n=$((n + 1))
        done
        traffic postgres_select $n
    }
    [ -f "$W/pg/server.log" ] && grep -q "ready to accept" "$W/pg/server.log" ||
        log "PostgreSQL did not start: $(tail -5 "$W/pg/server.log" 2> /dev/null)"
fi

sleep 2
curl -s http://127.0.0.1:9464/metrics > "$OUT/metrics.txt"
kill -TERM "$SONDE_PID"
wait "$SONDE_PID"
echo $? > "$OUT/sonde.exit"
log "sonde exited with $(cat "$OUT/sonde.exit")"
