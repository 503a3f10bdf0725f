# syntax=docker/dockerfile:1
#
# attrsync in a container: a release build on Debian bookworm, run from distroless as a non-root
# user. Build from the root of the source tree (BuildKit, the default builder since Docker 23):
#
#   docker build -t attrsync .
#
# Run it on a config repository (attrsync.yaml + users/) mounted at /repo, the working directory.
# --user makes the snapshot it writes under state/ yours, and lets it write there at all:
#
#   docker run --rm --user "$(id -u):$(id -g)" -v "$PWD:/repo" -e TIM_SECRET_KEY attrsync plan
#   docker run --rm --user "$(id -u):$(id -g)" -v "$PWD:/repo" -e TIM_SECRET_KEY attrsync apply
#
# `-e TIM_SECRET_KEY` passes the variable through from your shell, so the key is not in your
# shell history. examples/deploy/ha/compose.yaml runs the daemon (`watch`) from this image.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target/ live in cache mounts, so a rebuild downloads nothing and compiles
# only what changed. A cache mount is not part of the image: the binary is copied out of it.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked \
    && cp target/release/attrsync /usr/local/bin/attrsync \
    && strip /usr/local/bin/attrsync

# distroless/cc: glibc, libgcc and CA certificates, no shell and no package manager. attrsync
# needs nothing else: TLS is rustls with aws-lc-rs (no OpenSSL), linked into the binary.
FROM gcr.io/distroless/cc-debian12:nonroot

ARG SOURCE_URL=""
LABEL org.opencontainers.image.title="attrsync" \
      org.opencontainers.image.description="Declarative GitOps sync of Tencent Cloud IM push user attributes" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0" \
      org.opencontainers.image.source="${SOURCE_URL}"

COPY --from=build /usr/local/bin/attrsync /usr/local/bin/attrsync

# The config repository is mounted here; attrsync looks for attrsync.yaml in the working directory.
WORKDIR /repo
# nonroot, by number: Kubernetes' runAsNonRoot can only verify a numeric user.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/attrsync"]
CMD ["--help"]
