# syntax=docker/dockerfile:1
#
# One image with both Teresa programs:
#   /usr/local/bin/teresa-pooler    the data plane (the image's entrypoint)
#   /usr/local/bin/teresa-operator  the control plane
# The Helm chart (charts/teresa) runs each with an explicit command.
#
#   docker build -t ghcr.io/teresa-solution/teresa:0.1.0 .

FROM rust:1-bookworm AS builder
WORKDIR /src
# libclang for bindgen: pg_query (PostgreSQL's parser, classifying one-shot
# statements) generates its C bindings at build time.
RUN apt-get update && apt-get install -y --no-install-recommends libclang-dev \
    && rm -rf /var/lib/apt/lists/*
# The whole workspace (see .dockerignore): protox compiles the .proto files in
# pure Rust, so no protoc is needed. --locked builds exactly Cargo.lock.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p teresa-pooler -p teresa-operator \
    && install -D -m 0755 target/release/teresa-pooler /out/teresa-pooler \
    && install -D -m 0755 target/release/teresa-operator /out/teresa-operator

# glibc, libgcc and CA certificates, no shell, no package manager; runs as the
# unprivileged user 65532 (the chart's pods require it: runAsNonRoot,
# read-only root filesystem).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/teresa-pooler /out/teresa-operator /usr/local/bin/
USER 65532:65532
# 50052 lease API (gRPC, TLS), 50053 admin API (mTLS), 8082 pooler health and
# metrics, 8080 operator health and metrics.
EXPOSE 50052 50053 8082 8080
ENTRYPOINT ["/usr/local/bin/teresa-pooler"]
