# syntax=docker/dockerfile:1
# One image, one binary: `aaa receiver|consumer|watermark|migrate|...`.
# Dependencies are built in their own layer (cargo-chef), so a source change
# rebuilds only the workspace's crates.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.73
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin aaa
COPY . .
# librdkafka links zlib dynamically; the runtime image has glibc and libgcc
# only, so the one extra library travels with the binary.
RUN cargo build --release --locked --bin aaa \
 && mkdir -p /out/lib \
 && cp target/release/aaa /out/aaa \
 && ldd /out/aaa | awk '/libz\.so/ { print $3 }' | xargs -r -I{} cp {} /out/lib/ \
 && test -n "$(ls /out/lib)"

# No shell, no package manager; runs as the distroless "nonroot" user.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/lib/ /usr/lib/
COPY --from=builder /out/aaa /usr/local/bin/aaa
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/aaa"]
