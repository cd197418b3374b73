# syntax=docker/dockerfile:1
# flashgate: multi-stage build, small non-root runtime image.
#   docker build -t flashgate .
#   docker run -p 8080:8080 -e FLASHGATE_ADMIN_TOKEN=... -e FLASHGATE_JWT_SECRET=... \
#     -e FLASHGATE_REDIS_URL=redis://redis:6379 \
#     -e FLASHGATE_DATABASE_URL=postgres://flashgate:...@db:5432/flashgate flashgate

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
COPY loadtest/Cargo.toml loadtest/Cargo.toml
RUN mkdir -p src loadtest/src \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && echo 'fn main() {}' > loadtest/src/main.rs \
 && cargo fetch --locked
COPY build.rs ./
COPY src src
COPY lua lua
COPY migrations migrations
# The web pages (/admin/, /demo/) are compiled into the binary.
COPY web/admin web/admin
COPY web/demo web/demo
COPY web/shared web/shared
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked -p flashgate \
 && strip target/release/flashgate

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin flashgate
COPY --from=build /src/target/release/flashgate /usr/local/bin/flashgate
USER 10001:10001
ENV FLASHGATE_LISTEN=0.0.0.0:8080 \
    RUST_LOG=info \
    FLASHGATE_LOG_FORMAT=json
EXPOSE 8080
# Probe GET /readyz (Redis reachable) and GET /healthz (alive) from the orchestrator.
ENTRYPOINT ["/usr/local/bin/flashgate"]
CMD ["serve"]
