/work/main/benches/peers/target/release/deps/connect_flood-e9512a9e72f70fbf.d: src/bin/connect-flood.rs

/work/main/benches/peers/target/release/deps/connect_flood-e9512a9e72f70fbf: src/bin/connect-flood.rs

src/bin/connect-flood.rs:
