//! Compiles the `.proto` contract with protox (pure Rust, no `protoc`).

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/aljex/sync/v1/sync.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    let with_tonic = env::var_os("CARGO_FEATURE_TONIC").is_some();
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("sync_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .build_client(with_tonic)
        .build_server(with_tonic)
        .compile_fds(descriptors)?;
    Ok(())
}
