# syntax=docker/dockerfile:1
#
# One image for all three Runcast services: execution-api, event-persister, ws-gateway.
# Build:  DOCKER_BUILDKIT=1 docker build -t runcast:dev .
# Run:    docker run --rm runcast:dev execution-api --help
#
# No system protoc is needed (the contract crate compiles proto/ with protox) and the SQL
# migrations are embedded in the binaries, so the runtime stage holds only the binaries.

############################ build ############################
# The dashboard (embedded into ws-gateway at build time).
FROM node:20-bookworm-slim AS dashboard
WORKDIR /src
COPY clients ./clients
RUN cd clients/js && npm ci --no-audit --no-fund && npm run build && npm run build:dashboard

FROM rust:1.95-bookworm AS build
WORKDIR /src

# Checked sqlx macros (if any) read the committed .sqlx/ cache instead of a live database.
ENV SQLX_OFFLINE=true \
    CARGO_TERM_COLOR=never

COPY . .
COPY --from=dashboard /src/clients/dashboard/dist ./clients/dashboard/dist

# The registry, git and target caches live in BuildKit cache mounts, so they are not in any
# layer: the binaries must be copied out of target/ within the same RUN.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked \
        --bin execution-api --bin event-persister --bin ws-gateway --bin runcast \
 && mkdir -p /out \
 && cp target/release/execution-api target/release/event-persister target/release/ws-gateway target/release/runcast /out/

############################ runtime ############################
FROM debian:bookworm-slim AS runtime

# ca-certificates: TLS to NATS / PostgreSQL / OTLP; curl: container health checks.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 runcast \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin runcast

COPY --from=build /out/execution-api /out/event-persister /out/ws-gateway /out/runcast /usr/local/bin/

WORKDIR /app
USER 10001:10001

# ws-gateway 8080, execution-api 8081 (HTTP) + 50051 (gRPC), event-persister 8082.
EXPOSE 8080 8081 8082 50051

# The services handle SIGTERM themselves (graceful drain), so they run as PID 1 directly.
STOPSIGNAL SIGTERM
CMD ["ws-gateway"]
