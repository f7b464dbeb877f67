/work/main/benches/peers/target/release/ipc-bench: /work/main/benches/peers/src/bin/ipc-bench.rs
