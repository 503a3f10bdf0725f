//! The Tencent Cloud IM REST client: UserSig, wire types, rate limiter and error classes.
//!
//! - [`usersig`]: UserSig v2 signing and verification, pure functions (`docs/api.md`, "UserSig").
//! - [`Client`]: one HTTP attempt per call to a `v4/timpush/*` endpoint, after waiting for the
//!   shared [`RateLimiter`]; the UserSig is cached for 24 h and renewed 5 minutes before expiry.
//! - [`ApiError`]: every failure classified (transient, rate-limited, UserSig expired, fatal) so
//!   the caller decides what to retry; this module never retries by itself.
//! - [`SecretKey`] / [`UserSig`]: credentials that print as `***`.
//! - [`AttrApi`]: the calls the executor and the daemon make, implemented by [`Client`] and
//!   by the emulator in-process.
//! - [`wire`]: the documented JSON shapes, shared with the emulator.

mod attr_api;
mod client;
mod error;
pub mod limiter;
pub mod secret;
pub mod usersig;
pub mod wire;

pub use attr_api::AttrApi;
pub(crate) use client::{get_attr_outcome, read_answer};
pub use client::{
    AttrSlot, Client, ClientBuildError, ClientConfig, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_REQUEST_TIMEOUT, MAX_RESPONSE_BYTES, USERSIG_LIFETIME, USERSIG_RENEW_BEFORE,
};
pub use error::{describe, ApiError, CodeInfo, Endpoint, MAX_USERS_PER_CALL};
pub use limiter::RateLimiter;
pub use secret::{SecretKey, UserSig};
pub use wire::{BatchOutcome, GetAttrOutcome, UserAttrNames, UserAttrs, UserError};
