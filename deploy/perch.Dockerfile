# The perch binary in a small image: built with Rust on Debian bookworm, run on debian:bookworm-slim
# as a non-root user, with /healthz as the health check.
#
#   docker build -f deploy/perch.Dockerfile -t perch .       (context: the repository root)
#
# The build context is the whole workspace; deploy/perch.Dockerfile.dockerignore keeps target/,
# perch-data/ and .git out of it (BuildKit reads a <Dockerfile>.dockerignore next to the Dockerfile).
ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
# libclang: bindgen, for RocksDB's bindings.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libclang-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY gateway gateway
COPY cache cache
COPY policy policy
COPY bench bench
# Symbols stay (readable backtraces); debug info goes (it is most of the binary's size).
ENV CARGO_INCREMENTAL=0 \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo \
    CARGO_TERM_COLOR=never
RUN cargo build --release --locked -p perch-gateway --bin perch \
    && install -D -m 0755 target/release/perch /out/perch \
    && /out/perch --version

FROM ${RUNTIME_IMAGE}
# ca-certificates: TLS to the origin (rustls with the system roots); curl: the health check.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 perch \
    && useradd --system --uid 10001 --gid perch --home-dir /var/lib/perch --shell /usr/sbin/nologin perch \
    && install -d -o perch -g perch -m 0750 /var/lib/perch
COPY --from=build /out/perch /usr/local/bin/perch

# In a container Perch must listen beyond loopback, so PERCH_ACCESS_KEY_ID and
# PERCH_SECRET_ACCESS_KEY are required, and PERCH_ADMIN_TOKEN for the admin port (perch refuses to
# start without them and says so).
ENV PERCH_LISTEN=0.0.0.0:9000 \
    PERCH_ADMIN_LISTEN=0.0.0.0:9001 \
    PERCH_DATA_DIR=/var/lib/perch
USER 10001:10001
WORKDIR /var/lib/perch
EXPOSE 9000 9001
# SIGTERM: perch stops accepting, finishes the requests in flight (up to 30 s) and exits 0.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["sh", "-c", "curl -fsS -o /dev/null \"http://127.0.0.1:${PERCH_ADMIN_LISTEN##*:}/healthz\""]
ENTRYPOINT ["perch"]
CMD ["serve"]
