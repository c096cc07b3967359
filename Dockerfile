# Builds both binaries (`gateway`, `chat-api`) in a Rust image and runs them from debian-slim as a
# non-root user. `schema/` is embedded into `chat-api` at build time (`chat-api migrate`).
#   docker build -t chat-infra:dev .
#   docker run --rm chat-infra:dev chat-api --help
#   docker run --rm -e JWT_SECRET="$(openssl rand -hex 32)" -p 8080:8080 -p 8081:8081 chat-infra:dev
# The default command (embedded mode) listens on all addresses, so it needs a JWT key: without
# one it would verify tokens with the public development key, and it refuses to start.

FROM rust:1-bookworm AS builder
WORKDIR /src
# Manifests first so the dependency layer is cached across source-only changes.
COPY Cargo.toml Cargo.lock rust-toolchain.toml rustfmt.toml ./
COPY shared/Cargo.toml shared/Cargo.toml
COPY gateway/Cargo.toml gateway/Cargo.toml
COPY chat-api/Cargo.toml chat-api/Cargo.toml
COPY loadtest/Cargo.toml loadtest/Cargo.toml
RUN for c in shared gateway chat-api loadtest; do mkdir -p $c/src && echo 'fn main() {}' > $c/src/main.rs && touch $c/src/lib.rs; done \
    && cargo fetch --locked
COPY shared shared
COPY gateway gateway
COPY chat-api chat-api
COPY loadtest loadtest
COPY schema schema
RUN cargo build --profile dist --locked --bin gateway --bin chat-api \
    && cp target/dist/gateway target/dist/chat-api /usr/local/bin/

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/chat --create-home chat
COPY --from=builder /usr/local/bin/gateway /usr/local/bin/chat-api /usr/local/bin/
USER chat
WORKDIR /var/lib/chat
ENV DATA_DIR=/var/lib/chat \
    API_ADDR=0.0.0.0:8081 \
    GATEWAY_ADDR=0.0.0.0:8080
EXPOSE 8080 8081
# tini forwards SIGTERM so both services can drain (SPEC §9).
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["chat-api", "embedded"]
