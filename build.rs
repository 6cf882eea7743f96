//! Compiles the protobuf definitions with protox (pure Rust, no system `protoc`):
//! `proto/introspect/v1/introspect.proto` (introspectd's own API) and the vendored
//! Envoy external-authorization API (`envoy/service/auth/v3/external_auth.proto` and
//! its imports), and writes the file descriptor sets that server reflection serves.

use std::{
    env, fs,
    path::{Path, PathBuf},
};

use prost::Message;

fn compile(
    root: &str,
    descriptor: &str,
    out: &Path,
    btree_maps: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile([root], ["proto"])?;
    // `compile_fds` ignores `file_descriptor_set_path`, so the set that reflection
    // serves is written here by hand.
    fs::write(out.join(descriptor), fds.encode_to_vec())?;
    let mut config = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true);
    if btree_maps {
        config = config.btree_map(".");
    }
    config.compile_fds(fds)?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out = PathBuf::from(env::var("OUT_DIR")?);
    compile(
        "proto/introspect/v1/introspect.proto",
        "introspect_descriptor.bin",
        &out,
        false,
    )?;
    compile(
        "envoy/service/auth/v3/external_auth.proto",
        "envoy_ext_authz_descriptor.bin",
        &out,
        // Envoy's maps (request headers, context_extensions) as BTreeMaps: a Check
        // decodes one of about ten entries per request, and a small BTreeMap is built
        // and searched for less than a HashMap that SipHashes every key.
        true,
    )?;
    Ok(())
}
