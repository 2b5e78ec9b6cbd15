// Generates the etcd v3 gRPC types and services from proto/ (our wire-compatible subset).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_server(true)
        // The client is only used by the tests, which drive the gateway over real gRPC.
        .build_client(true)
        .compile_protos(&["proto/etcdserverpb/rpc.proto"], &["proto"])?;
    Ok(())
}
