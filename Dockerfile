# introspectd container image: build with the Rust toolchain, ship only the
# binary on distroless (glibc + libgcc, no shell, uid 65532).
#   docker build -t ghcr.io/introspectd/introspectd:0.1.0 .

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# protox compiles the proto in build.rs (no protoc); aws-lc-rs builds with the
# image's C compiler; rustls, so no OpenSSL at run time.
RUN cargo build --release --locked --bin introspectd \
 && install -D -m 0755 target/release/introspectd /out/introspectd

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="introspectd" \
      org.opencontainers.image.description="gRPC token-introspection service" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/introspectd /introspectd
USER 65532:65532
# gRPC (TokenService, grpc.health.v1, reflection) and Prometheus /metrics
EXPOSE 50051 9464
ENTRYPOINT ["/introspectd"]
CMD ["serve", "--config", "/etc/introspectd/config.yaml", "--log-format", "json"]
