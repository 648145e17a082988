//! Generates the gRPC code from `proto/switchyard/v1` with protox, so building needs
//! no system `protoc`, and writes the descriptor set that server reflection serves.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "switchyard/v1/catalog.proto",
        "switchyard/v1/mapping.proto",
        "switchyard/v1/replay.proto",
        "switchyard/v1/provider.proto",
        "switchyard/v1/dead_letters.proto",
        "switchyard/v1/events.proto",
        "switchyard/v1/stats.proto",
        "switchyard/v1/source.proto",
        "switchyard/v1/routes.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    let descriptors = protox::compile(files, [&root])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out.join("switchyard_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
