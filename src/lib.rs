//! attrsync keeps Tencent Cloud IM push user attributes equal to what a config repository declares.
//!
//! # Architecture
//!
//! The pure core sits at the bottom and knows nothing about files, networks or clocks:
//!
//! - [`model`]: the domain types — user ids, attributes, desired state, snapshot, plan.
//! - [`plan`]: `plan(&Desired, &Snapshot) -> Plan` and its renderings (text, JSON, Markdown).
//!
//! Around it, thin shells do the I/O:
//!
//! - [`config`]: reads `attrsync.yaml` and the user files into a validated [`model::Desired`],
//!   with every problem reported as `file:line:column`.
//! - [`state`]: the sled snapshot of what the server last accepted.
//! - [`api`]: the Tencent Cloud IM REST client (UserSig, rate limiter, error classes).
//! - [`apply`]: the executor — batches, retries, one snapshot commit per accepted batch.
//! - [`watch`]: the daemon — file events, periodic resync and manual triggers → reconcile.
//! - [`emulator`]: a local stand-in for the server, used by tests and the quickstart.
//! - [`ops`]: one function per command, wiring the shells to the core; `main.rs` only
//!   parses arguments and maps results to exit codes.
//!
//! Imports point inward: `model` and `api` import nothing from the crate; `plan`, `config` and
//! `state` only `model`; `apply` uses `api` and `state`; the `emulator` shares `api`'s wire
//! types and UserSig code (one contract, both ends); `watch` and `ops` wire the pipeline.

pub mod api;
pub mod apply;
pub mod clock;
pub mod config;
pub mod emulator;
pub mod model;
pub mod ops;
pub mod plan;
pub mod state;
pub mod text;
pub mod watch;
