//! Compiles the vendored subset of etcd's v3 API (`proto/etcd/`) with protox,
//! so the bench drives etcd over gRPC without a system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/etcd/rpc.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["proto/etcd"])?;
    tonic_prost_build::configure().build_server(false).compile_fds(descriptors)?;
    Ok(())
}
