//! Compiles the gRPC contract in proto/flotilla/v1 with protox (no system `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = "../proto";
    let files = [
        "flotilla/v1/types.proto",
        "flotilla/v1/agent.proto",
        "flotilla/v1/admin.proto",
    ];
    let fds = protox::compile(files, [root])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    println!("cargo:rerun-if-changed={root}/flotilla/v1");
    Ok(())
}
