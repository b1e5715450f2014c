//! Compiles `proto/*.proto` with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Neither protox nor prost-build emits this; without it edits to .proto files would not rebuild.
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["kith/v1/store.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
