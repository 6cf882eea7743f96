//! Compiles `proto/introspect/v1/introspect.proto` with protox (pure Rust, no system
//! `protoc`) and writes the file descriptor set that server reflection serves.

use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/introspect/v1/introspect.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    // `compile_fds` ignores `file_descriptor_set_path`, so the set that reflection
    // serves is written here by hand.
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("introspect_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
