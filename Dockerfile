# weft node image: `docker build -t weft .` then
#   docker run -p 6000:6000 -p 9100:9100 -v weft-plugins:/var/lib/weft/plugins weft
# Multi-stage: the build stage compiles `weft` and the Rust example plugins; the image holds the
# binary, the example plugins and nothing else, and runs as an unprivileged user.

FROM rust:1-bookworm AS build
WORKDIR /src
RUN rustup target add wasm32-wasip2
COPY . .
RUN cargo build --release --locked --bin weft \
 && cargo build --release --locked --manifest-path plugins/Cargo.toml --target wasm32-wasip2 \
      -p math -p text -p pipeline \
 && mkdir -p /out/plugins \
 && cp target/release/weft /out/weft \
 && cp plugins/target/wasm32-wasip2/release/math.wasm plugins/target/wasm32-wasip2/release/text.wasm \
       plugins/target/wasm32-wasip2/release/pipeline.wasm /out/plugins/

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/weft --create-home weft \
 && mkdir -p /var/lib/weft/plugins /var/lib/weft/data /var/lib/weft/cache /usr/share/weft \
 && chown -R weft:weft /var/lib/weft
COPY --from=build /out/weft /usr/local/bin/weft
COPY --from=build /out/plugins /usr/share/weft/example-plugins
USER weft
WORKDIR /var/lib/weft
# Every option has a WEFT_* variable (`weft node --help`); these make the container's defaults.
ENV WEFT_LISTEN=0.0.0.0:6000 \
    WEFT_HTTP=0.0.0.0:9100 \
    WEFT_PLUGINS=/var/lib/weft/plugins \
    WEFT_DATA_DIR=/var/lib/weft/data \
    WEFT_CACHE_DIR=/var/lib/weft/cache
EXPOSE 6000 9100
VOLUME ["/var/lib/weft/plugins", "/var/lib/weft/data"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/weft", "node"]
