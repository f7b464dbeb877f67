/work/main/benches/peers/target/release/deps/ipc_bench-7090ceac30be2342.d: src/bin/ipc-bench.rs

/work/main/benches/peers/target/release/deps/ipc_bench-7090ceac30be2342: src/bin/ipc-bench.rs

src/bin/ipc-bench.rs:
