//! The Aljex sync sink: applies live changes (gRPC from the edge filter) to
//! mirror tables in PostgreSQL.

pub mod apply;
pub mod db;
pub mod hash_password;
pub mod ingest;
pub mod metrics;
pub mod mirror;
pub mod rejections;
pub mod send;
pub mod serve;
pub mod service;
pub mod tables;
pub mod warm;
