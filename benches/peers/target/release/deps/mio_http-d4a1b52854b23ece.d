/work/main/benches/peers/target/release/deps/mio_http-d4a1b52854b23ece.d: src/bin/mio-http.rs

/work/main/benches/peers/target/release/deps/mio_http-d4a1b52854b23ece: src/bin/mio-http.rs

src/bin/mio-http.rs:
