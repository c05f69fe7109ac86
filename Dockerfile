# syntax=docker/dockerfile:1
# cal-relay image: built in a full Rust image, run from debian-slim as a non-root user.
#   docker build -t cal-relay .
#   docker run -p 8080:8080 -e CAL_WEBHOOK_SECRETS=... cal-relay
# Configuration: /etc/cal-relay/cal-relay.toml (CAL_RELAY_CONFIG); mount your own over it.
# Secrets: secrets_env = "CAL_WEBHOOK_SECRETS" (comma-separated) or secrets_file pointing at a
# mounted file (e.g. /run/secrets/cal-webhook). Spool: /var/lib/cal-relay (mount a volume).

ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS build
# librdkafka is compiled from source (bundled); it needs a C/C++ toolchain, cmake and these libs.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake libssl-dev libzstd-dev zlib1g-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin cal-relay \
 && install -D -m 0755 target/release/cal-relay /out/cal-relay

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 libzstd1 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 cal-relay \
 && useradd --system --uid 10001 --gid cal-relay --home-dir /var/lib/cal-relay --no-create-home cal-relay \
 && install -d -o cal-relay -g cal-relay -m 0750 /var/lib/cal-relay /etc/cal-relay
COPY --from=build /out/cal-relay /usr/local/bin/cal-relay
COPY config/docker.toml /etc/cal-relay/cal-relay.toml
ENV CAL_RELAY_CONFIG=/etc/cal-relay/cal-relay.toml \
    CAL_RELAY_LOG__FORMAT=json
USER 10001:10001
WORKDIR /var/lib/cal-relay
VOLUME ["/var/lib/cal-relay"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/cal-relay", "probe", "--url", "http://127.0.0.1:8080/healthz"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/cal-relay"]
CMD ["serve"]
