//! Rust types and gRPC stubs generated from Teresa's `.proto` files: the lease
//! API (`connectionpool`, wire-compatible with the original Go project) and the
//! admin API the operator uses to configure poolers (`teresa.admin.v1`).

#![forbid(unsafe_code)]

pub mod config;
pub mod identity;

/// The lease API: `connectionpool.ConnectionPoolService`.
pub mod connectionpool {
    tonic::include_proto!("connectionpool");
}

/// The admin API: `teresa.admin.v1.PoolerAdmin`.
pub mod admin {
    tonic::include_proto!("teresa.admin.v1");
}

/// Encoded `FileDescriptorSet` of the lease API, for server reflection.
pub const LEASE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/lease_descriptor.bin"));

/// Encoded `FileDescriptorSet` of the admin API, for server reflection.
pub const ADMIN_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/admin_descriptor.bin"));
