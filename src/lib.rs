//! attrsync keeps Tencent Cloud IM push user attributes equal to what a config repository declares.
//!
//! # Architecture
//!
//! `docs/architecture.md` draws the data flow (config → desired → plan → batches → API →
//! snapshot) and says who owns what.
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
//! - [`state`]: the snapshot of what the server holds and who is in doubt, behind the
//!   [`state::SnapshotStore`] trait: sled in a directory, or PostgreSQL shared by many
//!   machines (locked writers, lock-free readers).
//! - [`api`]: the Tencent Cloud IM REST client (UserSig, rate limiter, error classes), and the
//!   [`api::AttrApi`] trait it implements; the facts it relies on are in `docs/api.md`.
//! - [`apply`]: the executor — batches marked in doubt, sent, settled; the retry policy. It
//!   works against the two traits, so tests run it on the emulator in-process, on paused time.
//! - [`link`]: connecting to the configured server (a region, an endpoint or the embedded
//!   emulator) and checking its attribute names.
//! - [`watch`]: the daemon — file events, periodic resync, manual triggers and the drift scan
//!   → reconcile.
//! - [`emulator`]: a local stand-in for the server, used by tests and the quickstart.
//! - [`ops`]: one function per command, wiring the shells to the core; `main.rs` only
//!   parses arguments and maps results to exit codes.
//! - [`shutdown`]: SIGINT/SIGTERM the same way for every long-running command.
//! - [`clock`], [`text`], [`sync`], [`files`] and [`memory`]: the wall clock, plurals, the one
//!   lock policy, safe file reads and writes, and giving freed memory back: leaves that import
//!   nothing.
//!
//! Imports point inward: `model` imports nothing from the crate; `plan` and `config` only
//! `model` (and the `text` leaf); `state` and `api` the core; `apply` uses `api` and `state`;
//! `link` uses `api`, `apply`, `config` and the `emulator`; the `emulator` shares `api`'s wire
//! types and UserSig code (one contract, both ends); `watch` wires the pipeline without `ops`,
//! and `ops` wires it for the commands.

pub mod api;
pub mod apply;
pub mod clock;
pub mod config;
pub mod emulator;
pub mod files;
pub mod link;
pub mod memory;
pub mod model;
pub mod ops;
pub mod plan;
pub mod shutdown;
pub mod state;
pub mod sync;
pub mod text;
pub mod watch;
