fn main() {
    capnpc::CompilerCommand::new()
        .file("member.capnp")
        .run()
        .expect("compiling schema/member.capnp (is the `capnp` tool installed?)");
}
