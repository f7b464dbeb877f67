/work/main/benches/peers/target/release/mio-http: /work/main/benches/peers/src/bin/mio-http.rs
