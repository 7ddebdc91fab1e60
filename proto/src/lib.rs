//! The contract between the Aljex sync filter (edge) and sink (database).
//!
//! - [`v1`]: the protobuf messages and, with the `tonic` feature, the gRPC
//!   client and server of `aljex.sync.v1.SyncSink`.
//! - [`form`]: decoding an Aljex form body (`application/x-www-form-urlencoded`).
//! - [`names`], [`action`], [`change`]: the rules both ends must agree on
//!   (design.md section 3).

pub mod action;
pub mod change;
pub mod form;
pub mod names;
mod wire;

/// Generated protobuf types (and gRPC code with the `tonic` feature).
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/aljex.sync.v1.rs"));

    /// Encoded `FileDescriptorSet` of the contract, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/sync_descriptor.bin"));
}

/// Full gRPC path of `ApplyChange`, for callers that dispatch raw gRPC (the filter).
pub const SERVICE_NAME: &str = "aljex.sync.v1.SyncSink";
/// Method name of `ApplyChange`.
pub const APPLY_CHANGE_METHOD: &str = "ApplyChange";
/// Method name of `RecordRejection`.
pub const RECORD_REJECTION_METHOD: &str = "RecordRejection";

impl v1::Outcome {
    /// Lower-case label for replies, logs, metrics and the change log
    /// (`applied`, `deleted`, `not_found`, `stale`).
    pub fn label(self) -> &'static str {
        match self {
            v1::Outcome::Applied => "applied",
            v1::Outcome::Deleted => "deleted",
            v1::Outcome::NotFound => "not_found",
            v1::Outcome::Stale => "stale",
            v1::Outcome::Unspecified => "unspecified",
        }
    }
}
