# syntax=docker/dockerfile:1
# The zone-server image: zone-server, zone-lobby and the ops tools (zone-replay, zone-snapshot)
# with the zone files and the matchmaking modes, run as a non-root user on a slim Debian. Build
# from the repository root:
#
#   docker build -t zone-server:0.1.0 .
#
# The same image runs the lobby (command /usr/local/bin/zone-lobby); see assets/k8s/.
# CI cannot run a container engine here: .ci/dockerfile-check.sh checks that this file parses
# and that its build command is the README's (README.md, "Container image").

# ---- build: the workspace with its locked dependencies
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target caches survive between builds (BuildKit); the binaries are copied out
# of the cached target directory.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin zone-server --bin zone-lobby --bin zone-replay --bin zone-snapshot \
    && mkdir -p /out \
    && cp target/release/zone-server target/release/zone-lobby target/release/zone-replay target/release/zone-snapshot /out/

# ---- run: only the binaries, the zone files and the matchmaking modes
FROM debian:bookworm-slim AS run
RUN groupadd --system --gid 10001 zone \
    && useradd --system --uid 10001 --gid zone --home-dir /app --shell /usr/sbin/nologin zone \
    && mkdir -p /app /data \
    && chown zone:zone /data
COPY --from=build /out/zone-server /out/zone-lobby /out/zone-replay /out/zone-snapshot /usr/local/bin/
COPY assets/zones /app/assets/zones
COPY assets/match /app/assets/match
WORKDIR /app
# Listen beyond the container's loopback; the data directory is a volume (snapshots, journal).
ENV ZONE_ADMIN=0.0.0.0:9100 \
    ZONE_BIND=0.0.0.0:7777 \
    ZONE_DATA_DIR=/data \
    ZONE_LOBBY_LISTEN=0.0.0.0:8080
VOLUME ["/data"]
# 7777/udp: players; 9100: the zone server's /metrics, /healthz, /readyz; 8080: the lobby.
EXPOSE 7777/udp 9100/tcp 8080/tcp
USER 10001:10001
# SIGTERM drains the zone (players told, final snapshot) before exiting 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/zone-server"]
