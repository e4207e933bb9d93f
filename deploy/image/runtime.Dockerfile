# The runtime stage of the regmirror image: a root filesystem made by deploy/image/rootfs.sh, no
# base image. The root Dockerfile ends with exactly these lines (after its own FROM scratch, which
# copies the tree from its build stage); tests/e2e_image.rs builds this file from a prebuilt binary
# with no registry reachable, and checks that both stay the same.
FROM scratch
COPY rootfs/ /
COPY --chown=10001:10001 data/ /var/lib/regmirror/
# --- runtime (shared with the root Dockerfile) ---
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
