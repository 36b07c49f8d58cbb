# The zone server that benchmarks/net.sh, net-idle.sh and net-profile.sh measure, spelled once so
# that their figures are of the same server: demo zone (10,000 NPCs), UDP 127.0.0.1:17777, admin
# 127.0.0.1:19100, persistence off, --threads 2, JSON logs with stats every 5 s, room for 5,000
# clients, no handshake rate limit. INPUT_BATCH_TICKS=K adds --input-batch-ticks K (a build from
# before ae24386 has no such flag: leave it unset for those).
#
# Sourced, not run, from the repository root, with ZONE_TOKEN_SECRET exported (the bots need the
# same secret):
#   . benchmarks/net-server.sh
#   net_server "$BIN" 2> server.log &    # it execs, so $! is the server's own pid
#   SP=$!
#   net_server_ready || exit 1
NET_PORT=17777
NET_ADMIN=127.0.0.1:19100

net_server() {
  exec "$1/zone-server" --zone assets/zones/demo.toml --bind "127.0.0.1:$NET_PORT" --admin "$NET_ADMIN" \
    --persistence off --threads 2 --log-format json --stats-interval 5 --max-clients 5000 \
    --handshake-rate-per-ip 100000 ${INPUT_BATCH_TICKS:+--input-batch-ticks "$INPUT_BATCH_TICKS"}
}

net_server_ready() {
  for _ in $(seq 1 100); do
    curl -sf "http://$NET_ADMIN/readyz" >/dev/null && return 0
    sleep 0.1
  done
  echo "zone-server did not become ready on $NET_ADMIN (is another one running?)" >&2
  return 1
}
