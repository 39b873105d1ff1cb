//! Compiles the `.proto` files with protox (pure Rust), so building needs no
//! system `protoc`. Also writes a file descriptor set for gRPC reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["connection_pool.proto", "teresa/admin/v1/admin.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // One descriptor set per port, so reflection on the lease port never
    // lists the admin service.
    for (proto, file) in [
        (protos[0], "lease_descriptor.bin"),
        (protos[1], "admin_descriptor.bin"),
    ] {
        let set = protox::compile([proto], ["."])?;
        std::fs::write(out_dir.join(file), prost::Message::encode_to_vec(&set))?;
    }
    let descriptors = protox::compile(protos, ["."])?;
    // The admin snapshot doubles as the `--config` YAML schema: one shape for
    // both sources, camelCase like the TenantPool CRD, unknown fields refused.
    let mut config = tonic_prost_build::configure();
    for message in [
        "PoolerConfig",
        "TenantConfig",
        "DatabaseTarget",
        "PoolSettings",
        "LeaseSettings",
    ] {
        config = config.type_attribute(
            format!(".teresa.admin.v1.{message}"),
            "#[derive(serde::Serialize, serde::Deserialize)] \
             #[serde(rename_all = \"camelCase\", default, deny_unknown_fields)]",
        );
    }
    config.compile_fds(descriptors)?;
    Ok(())
}
