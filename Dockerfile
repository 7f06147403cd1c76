# syntax=docker/dockerfile:1
# imagegen-mcp as a shared service: MCP over streamable HTTP on :8787, config from
# /etc/imagegen (a Secret or a bind mount), images under /data. See docs/deploy.md.
#
#   docker build -t imagegen-mcp .
#   docker run --rm -p 8787:8787 -v "$PWD/secret:/etc/imagegen:ro" -v imagegen-data:/data imagegen-mcp

# --- build ---------------------------------------------------------------------------
# The toolchain this project is built and tested with (rust-version in Cargo.toml is the floor).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The registry and the target directory live in BuildKit cache mounts: a rebuild after a
# source change recompiles the crate, not its few hundred dependencies. The target directory
# is not part of any layer, so the binary is copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin imagegen-mcp \
    && install -D -m 0755 target/release/imagegen-mcp /out/imagegen-mcp

# --- run -----------------------------------------------------------------------------
# bookworm-slim rather than distroless: the binary has no probe subcommand, so the
# HEALTHCHECK needs curl. The binary needs only glibc and libgcc_s (TLS is rustls with
# built-in roots; no OpenSSL). Kubernetes probes over HTTP do not use the HEALTHCHECK.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 imagegen \
    && useradd --system --uid 10001 --gid imagegen --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin imagegen \
    && mkdir -p /data /etc/imagegen \
    && chown imagegen:imagegen /data
COPY --from=build /out/imagegen-mcp /usr/local/bin/imagegen-mcp

# The config file sits in a directory of its own so that a mounted Secret (or a bind-mounted
# directory) can replace it, and key/token files next to it, while the server runs.
ENV IMAGEGEN_CONFIG=/etc/imagegen/imagegen.toml \
    XDG_DATA_HOME=/data
# Images (default: /data/imagegen-mcp/images, or output.dir in the config).
VOLUME ["/data"]
USER 10001:10001
EXPOSE 8787
# /healthz needs no token. The port is the one of the default command below.
HEALTHCHECK --interval=30s --timeout=3s --start-period=5s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8787/healthz"]
# SIGTERM (docker stop, Kubernetes) drains: /readyz turns 503, calls in flight get
# server.shutdown_grace_s to finish, then exit 0. Give `docker stop -t` more than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["imagegen-mcp"]
# 0.0.0.0 refuses to start without [[server.auth.tokens]] (or OAuth, or
# server.auth.allow_unauthenticated = true) in the config.
CMD ["serve", "--http", "0.0.0.0:8787"]
