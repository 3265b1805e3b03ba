#!/usr/bin/env bash
# The main job on the default model `fashion`: set everything up, check the model in process,
# serve it and load-test it, tune it for a p99 SLO at 64 clients, and render the report.
# Works on a copy under out/demo so the committed example repository stays as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
unset PYTHONDONTWRITEBYTECODE  # setup.sh installs without bytecode: compiled at first import
SURGE=.venv/bin/surge
WORK=out/demo
SLO=${SURGE_DEMO_SLO:-50ms}
BUDGET=${SURGE_DEMO_BUDGET:-6m}

echo "== 1/4 the default model in process: accuracy and latency"
$SURGE demo

rm -rf "$WORK" && mkdir -p "$WORK/repo"
cp -r examples/repository/fashion "$WORK/repo/fashion"
read -r HTTP GRPC METRICS < <(.venv/bin/python -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')

echo "== 2/4 surge serve + surge bench (untuned configuration)"
$SURGE serve "$WORK/repo" --http-port "$HTTP" --grpc-port "$GRPC" --metrics-port "$METRICS" \
  > "$WORK/serve.log" 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 120); do
  .venv/bin/python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$HTTP/v2/health/ready', timeout=2)" \
    2>/dev/null && break
  kill -0 $SERVER 2>/dev/null || { cat "$WORK/serve.log"; exit 1; }
  sleep 0.5
done
$SURGE bench "http://127.0.0.1:$HTTP" --model fashion --data fashion-mnist --concurrency 1,16,64 --duration 8s \
  --json "$WORK/bench.json"
kill -TERM $SERVER && wait $SERVER || true
trap - EXIT

echo "== 3/4 surge tune: variants, accuracy, profiles, served runs, choice for p99 <= $SLO at 64 clients"
if ! $SURGE tune "$WORK/repo" --model fashion --data fashion-mnist --slo-p99 "$SLO" \
    --concurrency 64 --max-accuracy-drop 1.0 --budget "$BUDGET"; then
  echo "surge tune found no configuration that meets p99 <= $SLO here; the report shows why"
fi

echo "== 4/4 surge report"
$SURGE report "$WORK/repo" --model fashion
echo "report: $WORK/repo/fashion/tuning/report.html"
