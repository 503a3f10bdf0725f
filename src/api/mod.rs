//! The Tencent Cloud IM REST client: UserSig, wire types, rate limiter and error classes.

pub mod secret;
pub mod usersig;

pub use secret::{SecretKey, UserSig};
