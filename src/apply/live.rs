//! Reading live attributes with `get_attr`, for `plan --refresh` and `import`.

use std::collections::VecDeque;
use std::sync::Mutex;

use super::report::refused_users;
use super::{
    counted, lock, with_retries, CallFailure, CallStats, FailedUser, GaveUp, RetryPolicy,
    StopSignal, IN_FLIGHT,
};
use crate::api::{AttrApi, Endpoint};
use crate::model::{AttrName, Attrs, UserId, UserMap};

/// What `get_attr` found: the live attributes of the users it could read, and the users it
/// could not (with the server's code), who must be left as they were.
#[derive(Debug, Default)]
pub struct Live {
    /// User → live attributes (only the configured names).
    pub attrs: UserMap<Attrs>,
    /// Users the server answered with an error, or whose answer could not be read.
    pub errors: Vec<FailedUser>,
}

/// Reads the live attributes of `users` with `get_attr`, 100 per call, [`IN_FLIGHT`] calls at
/// once through the API's limiter. Only the configured `attributes` are kept (others on the
/// server are not attrsync's). A user the server answers with an error (70107 included), or
/// with a value attrsync cannot hold, is in [`Live::errors`], never read as having none.
pub async fn read_live(
    api: &dyn AttrApi,
    users: &[UserId],
    attributes: &[AttrName],
    retry: &RetryPolicy,
    stop: &StopSignal,
    stats: &CallStats,
) -> Result<Live, CallFailure> {
    use crate::model::AttrValue;
    let queue: Mutex<VecDeque<&[UserId]>> =
        Mutex::new(users.chunks(crate::model::MAX_BATCH_SIZE).collect());
    let found: Mutex<Vec<(UserId, Attrs)>> = Mutex::new(Vec::with_capacity(users.len()));
    let errors: Mutex<Vec<FailedUser>> = Mutex::new(Vec::new());
    let failure: Mutex<Option<CallFailure>> = Mutex::new(None);
    let worker = || async {
        loop {
            if stop.is_stopped() || lock(&failure).is_some() {
                break;
            }
            let Some(chunk) = lock(&queue).pop_front() else {
                break;
            };
            let accounts: Vec<String> = chunk.iter().map(|u| u.as_str().to_owned()).collect();
            let outcome = match with_retries(api, retry, stop, stats, || {
                counted(stats, Endpoint::GetAttr, api.get_attr(&accounts))
            })
            .await
            {
                Ok(outcome) => outcome,
                Err(gave_up) => {
                    lock(&failure).get_or_insert(gave_up);
                    continue;
                }
            };
            let mut refused = refused_users(crate::api::BatchOutcome {
                errors: outcome.errors,
            });
            let mut read = Vec::with_capacity(chunk.len());
            for user in chunk {
                let Some(live) = outcome.attrs.get(user.as_str()) else {
                    continue;
                };
                let mut pairs = Vec::with_capacity(live.len());
                let mut bad = None;
                for (name, value) in live {
                    let Some(name) = attributes.iter().find(|a| a.as_str() == name) else {
                        continue;
                    };
                    match AttrValue::new(value) {
                        Ok(value) => pairs.push((name.clone(), value)),
                        Err(err) => bad = Some(format!("the server holds {name} = {value:?}, which attrsync cannot hold ({err})")),
                    }
                }
                match bad {
                    None => read.push((user.clone(), Attrs::from_pairs(pairs))),
                    Some(reason) => refused.push(FailedUser {
                        user: user.as_str().to_owned(),
                        code: None,
                        reason,
                        in_doubt: false,
                    }),
                }
            }
            lock(&found).extend(read);
            lock(&errors).extend(refused);
        }
    };
    futures_util::future::join_all((0..IN_FLIGHT).map(|_| worker())).await;
    if let Some(failure) = crate::sync::into_inner(failure) {
        return Err(failure);
    }
    if stop.is_stopped() {
        return Err(CallFailure {
            gave_up: GaveUp::Interrupted,
            maybe_applied: false,
        });
    }
    let found = crate::sync::into_inner(found);
    let mut errors = crate::sync::into_inner(errors);
    errors.sort_by(|a, b| a.user.cmp(&b.user));
    Ok(Live {
        attrs: UserMap::from_unsorted(found)
            .unwrap_or_else(|_| unreachable!("each user is asked about once")),
        errors,
    })
}
