//! The Aljex sync edge filter for Envoy (proxy-wasm, `wasm32-wasip1`).
//!
//! Decisions live in plain Rust ([`flow`], [`config`], [`credentials`],
//! [`reply`]) behind the [`flow::Host`] trait and are tested natively; the
//! `host` module (wasm only) connects them to Envoy.

pub mod config;
pub mod credentials;
pub mod flow;
pub mod reply;

#[cfg(target_arch = "wasm32")]
mod host;
