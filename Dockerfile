# canary-gateway container image:  docker build -t canary-gateway .
#
# Stage 1 builds the release binary from the lock file (--locked: the exact
# dependency versions that CI tested). Stage 2 is distroless (glibc, CA
# certificates, no shell, no package manager) running as the non-root user
# 65532. The configuration is not baked in: give the TOML in the environment
# variable CANARY_GATEWAY_CONFIG (an ECS task definition's environment or a
# Secrets Manager / SSM secret), or mount a file and run `run --config FILE`.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin canary-gateway \
    && mkdir -p /out/state \
    && cp target/release/canary-gateway /out/canary-gateway

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/canary-gateway /usr/local/bin/canary-gateway
# The working directory holds the state file by default (gateway.state.json) when
# the config comes from CANARY_GATEWAY_CONFIG; owned by the non-root user.
COPY --from=build --chown=65532:65532 /out/state /var/lib/canary-gateway
WORKDIR /var/lib/canary-gateway
USER 65532:65532
# 9080: traffic (the ALB target); 9901: admin API (/readyz is the target group's
# health check; /ready and /stats/prometheus answer like Envoy's did).
EXPOSE 9080 9901
# The binary is its own probe: GET /readyz on the admin port, exit 0 or 1
# (CANARY_ADMIN_URL, default http://127.0.0.1:9901, says where).
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["/usr/local/bin/canary-gateway", "health"]
# ECS sends SIGTERM on stop; the gateway drains for up to [timeouts] shutdown_grace
# (25 s), inside the task definition's stopTimeout (30 s).
ENTRYPOINT ["/usr/local/bin/canary-gateway"]
CMD ["run"]
