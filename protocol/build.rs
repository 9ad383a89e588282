//! Compiles the .proto files with protox (pure Rust), so no system `protoc` is needed.
fn main() {
    let protos = ["proto/manager.proto", "proto/connector.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"]).expect("compile protos");
    tonic_prost_build::configure()
        .compile_fds(fds)
        .expect("generate gRPC code");
}
