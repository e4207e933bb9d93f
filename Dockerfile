# regmirror container image: `docker build -t regmirror .` (needs Docker Hub for the build stage).
#
# Build stage: Debian 12's Rust image compiles the release binary; deploy/image/rootfs.sh then lays
# out the runtime tree (the stripped binary, the glibc libraries it links, the CA bundle, a non-root
# user 10001 and its data directory). Runtime stage: nothing but that tree (no shell, no package
# manager). Run it read-only:
#
#   docker run -d --read-only -p 5000:5000 -v regmirror-data:/var/lib/regmirror regmirror
#
# A configuration file: -v ./regmirror.toml:/etc/regmirror/config.toml:ro -e REGMIRROR_CONFIG=/etc/regmirror/config.toml
# The image CI builds (tests/e2e_image.rs) comes from deploy/image/runtime.Dockerfile, whose lines
# after `COPY rootfs/ /` are the same as this file's after `COPY --from=build ...`.
FROM docker.io/library/rust:1.95-slim-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates binutils && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked && cp target/release/regmirror /regmirror
RUN sh deploy/image/rootfs.sh /regmirror /image

FROM scratch
COPY --from=build /image/rootfs/ /
COPY --from=build --chown=10001:10001 /image/data/ /var/lib/regmirror/
# --- runtime (shared with deploy/image/runtime.Dockerfile) ---
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="regmirror" \
      org.opencontainers.image.description="A pull-through cache for container registries" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
# The data directory is the volume (this overrides `data_dir` of a config file); `listen` keeps its
# default 0.0.0.0:5000 unless the config file or REGMIRROR_LISTEN says otherwise.
ENV REGMIRROR_DATA_DIR=/var/lib/regmirror \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 10001:10001
VOLUME ["/var/lib/regmirror"]
EXPOSE 5000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/regmirror", "healthcheck", "--url", "http://127.0.0.1:5000/healthz"]
ENTRYPOINT ["/usr/local/bin/regmirror"]
CMD ["serve"]
