//! Compiles every `proto/kith/v1/*.proto` with protox (pure Rust), so no system `protoc` is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Neither protox nor prost-build emits this; without it edits to .proto files would not rebuild.
    println!("cargo:rerun-if-changed=proto");
    let mut files: Vec<PathBuf> = std::fs::read_dir("proto/kith/v1")?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "proto"))
        .filter_map(|path| path.strip_prefix("proto").ok().map(PathBuf::from))
        .collect();
    files.sort();
    let fds = protox::compile(&files, ["proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
