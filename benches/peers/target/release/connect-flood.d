/work/main/benches/peers/target/release/connect-flood: /work/main/benches/peers/src/bin/connect-flood.rs
