//! [`AttrApi`]: the calls the executor, the live reader and the daemon make, as a trait, so
//! they run against the HTTP [`Client`] in production and against the emulator in-process
//! (on paused time) in tests.

use futures_util::future::BoxFuture;

use super::client::Client;
use super::error::ApiError;
use super::wire::{BatchOutcome, GetAttrOutcome, UserAttrNames, UserAttrs};

/// The server's user-attribute calls. Each method is one attempt, paced by the implementation's
/// rate limiter and classified into an [`ApiError`]; retrying is the caller's (see
/// `apply::with_retries`).
pub trait AttrApi: Send + Sync {
    /// Sets the given attributes of up to 100 users; users listed in
    /// [`BatchOutcome::errors`] were refused, every other one was accepted.
    fn set_attr<'a>(
        &'a self,
        users: &'a [UserAttrs],
    ) -> BoxFuture<'a, Result<BatchOutcome, ApiError>>;

    /// Removes the named attributes of up to 100 users; partial success as for `set_attr`.
    fn remove_attr<'a>(
        &'a self,
        users: &'a [UserAttrNames],
    ) -> BoxFuture<'a, Result<BatchOutcome, ApiError>>;

    /// Reads the attributes of up to 100 users.
    fn get_attr<'a>(
        &'a self,
        accounts: &'a [String],
    ) -> BoxFuture<'a, Result<GetAttrOutcome, ApiError>>;

    /// Signs a fresh UserSig for the next calls (after a 70001 answer).
    fn renew_usersig(&self);
}

impl AttrApi for Client {
    fn set_attr<'a>(
        &'a self,
        users: &'a [UserAttrs],
    ) -> BoxFuture<'a, Result<BatchOutcome, ApiError>> {
        Box::pin(Client::set_attr(self, users))
    }

    fn remove_attr<'a>(
        &'a self,
        users: &'a [UserAttrNames],
    ) -> BoxFuture<'a, Result<BatchOutcome, ApiError>> {
        Box::pin(Client::remove_attr(self, users))
    }

    fn get_attr<'a>(
        &'a self,
        accounts: &'a [String],
    ) -> BoxFuture<'a, Result<GetAttrOutcome, ApiError>> {
        Box::pin(Client::get_attr(self, accounts))
    }

    fn renew_usersig(&self) {
        Client::renew_usersig(self);
    }
}
