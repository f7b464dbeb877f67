/work/main/benches/peers/target/release/openloop: /work/main/benches/peers/src/bin/openloop.rs
