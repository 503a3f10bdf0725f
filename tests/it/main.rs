//! The integration tests, in one binary: each module is one area, run against the real parts
//! (the `attrsync` binary, the emulator over HTTP on loopback, sled in temporary directories,
//! a throwaway PostgreSQL cluster, real signals). One binary links the crate once instead of once per file.

mod common;
mod pg_support;
mod watch_support;

mod api_client;
mod api_limiter;
mod api_rate_limit;
mod api_secrets;
mod api_usersig;
mod apply_executor;
mod cli_apply;
mod cli_experience;
mod cli_plan;
mod cli_postgres;
mod cli_state;
mod cli_validate;
mod config_cache;
mod emulator_http;
mod files_safety;
mod packaging;
mod state_conformance;
mod watch_daemon;
mod watch_endpoints;
mod watch_failover;
