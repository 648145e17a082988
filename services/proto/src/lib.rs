//! The gRPC control API, package `switchyard.v1`: the code generated from
//! `proto/switchyard/v1` (messages, clients and servers), its encoded descriptor set
//! for server reflection, and the conversions between the wire types and the catalog's
//! JSON documents and times.
//!
//! The control server and `syctl` both build on this crate, so the CLI needs neither
//! the server nor the pipeline's crates.

#![forbid(unsafe_code)]

mod generated {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("switchyard.v1");
}

pub use generated::*;

pub mod convert;

/// Encoded file descriptor set of `switchyard.v1`, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/switchyard_descriptor.bin"));
