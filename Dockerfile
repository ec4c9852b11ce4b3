# Lifeguard container image. No container engine runs in this project's CI, so this file is not
# built here: tests/deploy.rs only checks that its CMD serves the paths and ports the Helm chart
# (helm/lifeguard) expects. Build with `docker build -t <registry>/lifeguard:<version> .`.

# Build stage: the project's one toolchain (rust-version 1.95). --locked: the image gets exactly
# the versions in Cargo.lock.
FROM rust:1.95-slim AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p lifeguard \
    && cp target/release/lifeguard /lifeguard

# Runtime: glibc + libgcc + CA certificates, no shell, no package manager; `nonroot` is UID 65532,
# matching the chart's runAsUser.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /lifeguard /lifeguard
USER nonroot:nonroot
# 9000: gRPC (ext_authz, ext_proc, grpc.health.v1); 9901: admin (/healthz, /readyz, /metrics, POST /reload).
EXPOSE 9000 9901
ENTRYPOINT ["/lifeguard"]
# The bundle directory is where the chart mounts its ConfigMap; 0.0.0.0 because Envoy is in another
# container or pod.
CMD ["serve","--bundle","/etc/lifeguard/bundle","--grpc","0.0.0.0:9000","--admin","0.0.0.0:9901","--log-format","json"]
