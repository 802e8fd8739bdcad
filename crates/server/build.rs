//! Compiles `proto/` with protox (pure Rust, no system `protoc`) and generates
//! the tonic services and the descriptor set used by server reflection.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "cordon/identity/v1/identity.proto",
    "cordon/sandbox/v1/sandbox.proto",
    "cordon/ratelimit/v1/ratelimit.proto",
    "cordon/ca/v1/ca.proto",
    "cordon/audit/v1/audit.proto",
    "cordon/guard/v1/guard.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    println!("cargo:rerun-if-changed={}", proto_root.display());
    let descriptors = protox::compile(PROTOS, [&proto_root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("cordon_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
