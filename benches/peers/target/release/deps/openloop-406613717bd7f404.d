/work/main/benches/peers/target/release/deps/openloop-406613717bd7f404.d: src/bin/openloop.rs

/work/main/benches/peers/target/release/deps/openloop-406613717bd7f404: src/bin/openloop.rs

src/bin/openloop.rs:
