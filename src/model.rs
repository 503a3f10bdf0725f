//! Domain types shared by every layer: user ids, attributes, desired state, snapshot, plan.
//!
//! Nothing here does I/O. Collections are sorted vectors rather than maps: a config repo can
//! declare a million users, and a sorted `Vec` is a third of the memory of a `BTreeMap`, sorts
//! in one pass and lets the planner merge-join desired state and snapshot in linear time.

use std::fmt;
use std::sync::Arc;

/// Most bytes a user id may have.
///
/// The API documents no length for `To_Account`, which takes a UserID or a push
/// RegistrationID: IM UserIDs are at most 32 bytes, and the docs' own RegistrationID example is
/// a 36-byte UUID. 128 bytes refuses neither, and still stops a runaway value
/// (`docs/api.md`, "Limits").
pub const MAX_USER_ID_BYTES: usize = 128;
/// Most bytes an attribute value may have (the API rejects longer values with 90033).
pub const MAX_VALUE_BYTES: usize = 50;
/// Most bytes an attribute name may have.
pub const MAX_ATTR_NAME_BYTES: usize = 50;
/// Most attribute names an app may register (slots "0".."9").
pub const MAX_ATTRIBUTES: usize = 10;
/// Most users one API call may carry.
pub const MAX_BATCH_SIZE: usize = 100;
/// Most calls per second the API allows.
pub const MAX_RATE_LIMIT: u32 = 100;
/// The environment variable that holds the app's secret key unless `secret_key_env` names
/// another (the emulator reads the same one).
pub const DEFAULT_SECRET_KEY_ENV: &str = "TIM_SECRET_KEY";

/// A validated user id (the API's `To_Account`).
///
/// Held inline (no allocation) up to 24 bytes, which covers nearly every real id: a million
/// users are a million ids in the desired state and another million in the snapshot, and
/// one small allocation each cost a third of the memory a plan used.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserId(compact_str::CompactString);

impl UserId {
    /// Validates `raw` as a user id: non-empty, at most [`MAX_USER_ID_BYTES`], no control
    /// characters.
    pub fn new(raw: &str) -> Result<Self, InvalidValue> {
        if raw.is_empty() {
            return Err(InvalidValue::new("a user id must not be empty"));
        }
        if raw.len() > MAX_USER_ID_BYTES {
            return Err(InvalidValue::new(format!(
                "user id is {} bytes long, at most {MAX_USER_ID_BYTES} are allowed",
                raw.len()
            )));
        }
        if raw.chars().any(char::is_control) {
            return Err(InvalidValue::new(
                "a user id must not contain control characters",
            ));
        }
        Ok(Self(compact_str::CompactString::new(raw)))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// An attribute name, shared between all users that carry it.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AttrName(Arc<str>);

impl AttrName {
    /// Validates `raw` as an attribute name: 1..=50 bytes, no control characters.
    pub fn new(raw: &str) -> Result<Self, InvalidValue> {
        if raw.is_empty() || raw.len() > MAX_ATTR_NAME_BYTES {
            return Err(InvalidValue::new(format!(
                "an attribute name must be 1 to {MAX_ATTR_NAME_BYTES} bytes long"
            )));
        }
        if raw.chars().any(char::is_control) {
            return Err(InvalidValue::new(
                "an attribute name must not contain control characters",
            ));
        }
        Ok(Self(raw.into()))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AttrName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AttrName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// A validated attribute value: 1..=50 bytes of UTF-8 without control characters. Shared, so
/// that equal values loaded through a [`Interner`] are one allocation.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AttrValue(Arc<str>);

impl AttrValue {
    /// Validates `raw` as an attribute value.
    pub fn new(raw: &str) -> Result<Self, InvalidValue> {
        if raw.is_empty() {
            return Err(InvalidValue::new("an attribute value must not be empty"));
        }
        if raw.len() > MAX_VALUE_BYTES {
            return Err(InvalidValue::new(format!(
                "value is {} bytes long, at most {MAX_VALUE_BYTES} are allowed",
                raw.len()
            )));
        }
        // A line break or tab inside a push attribute is never intended: it is a YAML block
        // scalar's trailing newline or a paste accident, and the server would store it as is.
        if let Some(c) = raw.chars().find(|c| c.is_control()) {
            return Err(InvalidValue::new(format!(
                "an attribute value must not contain control characters (found {})",
                describe_control(c)
            )));
        }
        Ok(Self(raw.into()))
    }

    /// The value as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Shares equal attribute values, and equal attribute sets, while a snapshot or a config
/// loads: a million users hold a few dozen distinct cities and tiers, and usually a few hundred
/// distinct combinations, so an allocation per value and per user would be most of the memory
/// and a good part of the time. A value is validated once, when first seen.
#[derive(Debug, Default)]
pub struct Interner {
    // The standard, randomly keyed hasher: a hostile config cannot pick values that collide.
    values: std::collections::HashSet<Arc<str>>,
    sets: std::collections::HashSet<Attrs>,
}

impl Interner {
    /// `raw` as a value, shared with every equal one seen before.
    pub fn value(&mut self, raw: &str) -> Result<AttrValue, InvalidValue> {
        if let Some(seen) = self.values.get(raw) {
            return Ok(AttrValue(Arc::clone(seen)));
        }
        let value = AttrValue::new(raw)?;
        self.values.insert(Arc::clone(&value.0));
        Ok(value)
    }

    /// `value`, or the equal one seen before (so `value`'s own allocation can go).
    pub fn share(&mut self, value: AttrValue) -> AttrValue {
        match self.values.get(&*value.0) {
            Some(seen) => AttrValue(Arc::clone(seen)),
            None => {
                self.values.insert(Arc::clone(&value.0));
                value
            }
        }
    }

    /// [`Attrs::from_pairs`], shared with every equal set seen before.
    pub fn attrs(&mut self, mut pairs: Vec<(AttrName, AttrValue)>) -> Attrs {
        self.attrs_of(&mut pairs)
    }

    /// [`Interner::attrs`] of the pairs in `scratch`, which it leaves sorted and deduplicated:
    /// a loader reuses one buffer for every user, and allocates only for a set not seen
    /// before.
    pub fn attrs_of(&mut self, scratch: &mut Vec<(AttrName, AttrValue)>) -> Attrs {
        sort_pairs(scratch);
        if let Some(seen) = self.sets.get(scratch.as_slice()) {
            return seen.clone();
        }
        let set = Attrs(Arc::new(scratch.as_slice().into()));
        self.sets.insert(set.clone());
        set
    }
}

impl fmt::Display for AttrValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AttrValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// A control character as people know it: `a line break (\n)`, `a tab (\t)`, `U+0007`.
fn describe_control(c: char) -> String {
    match c {
        '\n' => "a line break (\\n)".to_owned(),
        '\r' => "a carriage return (\\r)".to_owned(),
        '\t' => "a tab (\\t)".to_owned(),
        other => format!("U+{:04X}", u32::from(other)),
    }
}

/// Why a raw string is not a valid id, name or value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(String);

impl InvalidValue {
    fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// One user's attributes, sorted by name, each name at most once. Shared: users with equal
/// attributes loaded through an [`Interner`] hold one set.
///
/// A thin pointer (8 bytes, not a slice's 16): every user in the desired state and in the
/// snapshot holds one, and the set behind it is shared.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Attrs(Arc<Box<[(AttrName, AttrValue)]>>);

/// Looks a set up by its pairs (the interner's sets): `Attrs` hashes and compares as its
/// slice of pairs does.
impl std::borrow::Borrow<[(AttrName, AttrValue)]> for Attrs {
    fn borrow(&self) -> &[(AttrName, AttrValue)] {
        &self.0
    }
}

impl Default for Attrs {
    fn default() -> Self {
        Self(Arc::new(Box::new([])))
    }
}

/// Sorts `pairs` by name in place, a later pair for a name winning over an earlier one.
fn sort_pairs(pairs: &mut Vec<(AttrName, AttrValue)>) {
    // Stable sort keeps declaration order among equal names, so "last wins" is well defined.
    // Names are a few bytes: compared inline, not through a `memcmp` call per comparison
    // (a million users are sorted this way while a config loads).
    let order = |a: &AttrName, b: &AttrName| a.0.bytes().cmp(b.0.bytes());
    pairs.sort_by(|a, b| order(&a.0, &b.0));
    // `dedup_by` keeps the first of a run; swapping the later value into it keeps the last.
    pairs.dedup_by(|later, kept| {
        let same = order(&later.0, &kept.0).is_eq();
        if same {
            std::mem::swap(&mut kept.1, &mut later.1);
        }
        same
    });
}

impl Attrs {
    /// Builds attributes from pairs in any order; a later pair for the same name wins.
    pub fn from_pairs(mut pairs: Vec<(AttrName, AttrValue)>) -> Self {
        sort_pairs(&mut pairs);
        Self(Arc::new(pairs.into_boxed_slice()))
    }

    /// Validates `(name, value)` text pairs into attributes (a later pair for a name wins).
    pub fn parse(pairs: &[(&str, &str)]) -> Result<Self, InvalidValue> {
        let pairs = pairs
            .iter()
            .map(|(n, v)| Ok((AttrName::new(n)?, AttrValue::new(v)?)))
            .collect::<Result<_, InvalidValue>>()?;
        Ok(Self::from_pairs(pairs))
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&AttrValue> {
        self.0
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()
            .map(|i| &self.0[i].1)
    }

    /// Iterates over `(name, value)` in name order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&AttrName, &AttrValue)> {
        self.0.iter().map(|(n, v)| (n, v))
    }

    /// Number of attributes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no attribute is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// These attributes with `changes` applied: `Some` sets a value, `None` removes it.
    pub fn with_changes(&self, changes: &[AttrChange]) -> Attrs {
        let mut pairs: Vec<(AttrName, AttrValue)> = self
            .iter()
            .filter(|(name, _)| !changes.iter().any(|c| &c.name == *name))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        pairs.extend(
            changes
                .iter()
                .filter_map(|c| c.after.clone().map(|v| (c.name.clone(), v))),
        );
        Attrs::from_pairs(pairs)
    }
}

impl fmt::Debug for Attrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// A map from user id to `V`, kept as a vector sorted by user id with unique ids.
#[derive(Clone, PartialEq, Eq)]
pub struct UserMap<V>(Vec<(UserId, V)>);

impl<V> Default for UserMap<V> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<V: fmt::Debug> fmt::Debug for UserMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<V> UserMap<V> {
    /// Builds a map from entries that are already sorted by id with no id twice.
    ///
    /// Returns `None` when they are not, so callers that promised sortedness (the store
    /// iterates keys in order) find out instead of getting wrong lookups.
    pub fn from_sorted(entries: Vec<(UserId, V)>) -> Option<Self> {
        entries
            .windows(2)
            .all(|w| w[0].0 < w[1].0)
            .then_some(Self(entries))
    }

    /// Builds a map from entries in any order. When an id appears more than once, returns
    /// the ids that are repeated (each once) instead.
    pub fn from_unsorted(mut entries: Vec<(UserId, V)>) -> Result<Self, Vec<UserId>> {
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut repeated: Vec<UserId> = entries
            .windows(2)
            .filter(|w| w[0].0 == w[1].0)
            .map(|w| w[0].0.clone())
            .collect();
        if repeated.is_empty() {
            Ok(Self(entries))
        } else {
            repeated.dedup();
            Err(repeated)
        }
    }

    /// The entry for `user`, if present.
    pub fn get(&self, user: &str) -> Option<&V> {
        self.0
            .binary_search_by(|(id, _)| id.as_str().cmp(user))
            .ok()
            .map(|i| &self.0[i].1)
    }

    /// Iterates over entries in user-id order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&UserId, &V)> {
        self.0.iter().map(|(id, v)| (id, v))
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is no user.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What the config repository declares: user id → attributes.
pub type Desired = UserMap<Attrs>;

/// What attrsync last saw the server accept for one user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotEntry {
    /// The attributes the server accepted.
    pub attrs: Attrs,
    /// When they were applied, in seconds since the Unix epoch.
    pub applied_at: u64,
}

/// A user whose attributes on the server attrsync does not know: a write was sent and no answer
/// confirmed or refused it (a lost reply, a timeout, a killed process), or a drift scan saw a
/// live value that differs from the snapshot.
///
/// The snapshot entry of such a user (if any) is what the server held before; the server may
/// hold that, or [`InDoubt::maybe`], or a mix. A plan never compares against either: it re-sends
/// the user's full desired state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InDoubt {
    /// Attributes the server may hold instead of the snapshot's: those of the unconfirmed write
    /// (empty for a delete), or the live ones a drift scan read.
    pub maybe: Attrs,
    /// Why the user is in doubt, and since when.
    pub note: DoubtNote,
}

/// Why a user is in doubt and since when, as shown in plans.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DoubtNote {
    /// When the doubt arose, in seconds since the Unix epoch.
    pub since: u64,
    /// What happened, e.g. "a write was sent and no answer confirmed it".
    pub reason: String,
}

/// What attrsync last saw the server accept, per user, plus the serial of the last write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The users and their last applied attributes.
    pub users: UserMap<SnapshotEntry>,
    /// Users whose value on the server is unknown (see [`InDoubt`]).
    pub in_doubt: UserMap<InDoubt>,
    /// Grows with every committed write; a saved plan records it to detect staleness.
    pub serial: u64,
}

impl Snapshot {
    /// A snapshot recording `users` as applied at `applied_at` (users without attributes are
    /// not recorded) and `in_doubt`, at serial 0: the content `import` and `state import`
    /// write.
    pub fn recorded(users: &UserMap<Attrs>, in_doubt: UserMap<InDoubt>, applied_at: u64) -> Self {
        let entries = users
            .iter()
            .filter(|(_, attrs)| !attrs.is_empty())
            .map(|(user, attrs)| {
                (
                    user.clone(),
                    SnapshotEntry {
                        attrs: attrs.clone(),
                        applied_at,
                    },
                )
            })
            .collect();
        Snapshot {
            users: UserMap::from_sorted(entries)
                .unwrap_or_else(|| unreachable!("taken in order from a UserMap")),
            in_doubt,
            serial: 0,
        }
    }
}

/// The region an app lives in, which decides the API's host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Region {
    /// Mainland China.
    China,
    /// Singapore.
    Singapore,
    /// Seoul.
    Seoul,
    /// Tokyo.
    Tokyo,
    /// Frankfurt.
    Frankfurt,
    /// Silicon Valley.
    SiliconValley,
    /// Jakarta.
    Jakarta,
}

impl Region {
    /// Every region with its configuration name and API host (`docs/api.md`, "Endpoints").
    pub const ALL: [(Region, &'static str, &'static str); 7] = [
        (Region::China, "china", "console.tim.qq.com"),
        (Region::Singapore, "singapore", "adminapisgp.im.qcloud.com"),
        (Region::Seoul, "seoul", "adminapikr.im.qcloud.com"),
        (Region::Tokyo, "tokyo", "adminapijpn.im.qcloud.com"),
        (Region::Frankfurt, "frankfurt", "adminapiger.im.qcloud.com"),
        (
            Region::SiliconValley,
            "silicon-valley",
            "adminapiusa.im.qcloud.com",
        ),
        (Region::Jakarta, "jakarta", "adminapiidn.im.qcloud.com"),
    ];

    /// The region called `name` in `attrsync.yaml`.
    pub fn from_name(name: &str) -> Option<Region> {
        Self::ALL
            .iter()
            .find(|(_, n, _)| *n == name)
            .map(|(r, _, _)| *r)
    }

    /// The name used in `attrsync.yaml`.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(r, ..)| *r == self)
            .map_or("", |e| e.1)
    }

    /// The base URL of the REST API in this region.
    pub fn base_url(self) -> String {
        let host = Self::ALL
            .iter()
            .find(|(r, ..)| *r == self)
            .map_or("", |e| e.2);
        format!("https://{host}")
    }
}

/// The server an app's snapshot talks about: its values mean nothing for another one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A Tencent Cloud region (`region:`).
    Region(Region),
    /// Any base URL (`endpoint: https://…`): a proxy, an emulator.
    Endpoint(String),
    /// `endpoint: embedded`: the emulator, run in-process with its data under the state dir.
    Embedded,
}

impl Target {
    /// The name recorded in the snapshot: `embedded`, or the API's base URL without a trailing
    /// slash, so `region: singapore` and its own URL as `endpoint` are the same server.
    pub fn key(&self) -> String {
        match self {
            Target::Region(region) => region.base_url(),
            Target::Endpoint(url) => url.trim_end_matches('/').to_owned(),
            Target::Embedded => "embedded".to_owned(),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Region(region) => write!(f, "region {} ({})", region.name(), region.base_url()),
            Target::Endpoint(url) => write!(f, "endpoint {url}"),
            Target::Embedded => f.write_str("the embedded emulator"),
        }
    }
}

/// Whether the API may be called at `url`: `https://` anywhere, plain `http://` only on this
/// machine (a loopback address or `localhost`), since every call carries the app's admin
/// UserSig in its query string.
pub fn endpoint_is_safe(url: &str) -> bool {
    if url.starts_with("https://") {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map_or(v6, |(ip, _)| ip),
        None => host.split_once(':').map_or(host, |(name, _)| name),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Where a snapshot lives: a directory (sled, the default) or a PostgreSQL database.
#[derive(Clone, PartialEq, Eq)]
pub enum StateLocation {
    /// A sled database in this directory.
    Dir(std::path::PathBuf),
    /// A PostgreSQL database, shared by every machine that uses the URL.
    Postgres(PostgresUrl),
}

impl StateLocation {
    /// Reads `--state`, `ATTRSYNC_STATE` or the `state` setting: a `postgres://` or
    /// `postgresql://` URL, or else a directory (relative ones are resolved against `base`).
    pub fn parse(text: &str, base: &std::path::Path) -> Self {
        if PostgresUrl::is_url(text) {
            StateLocation::Postgres(PostgresUrl(text.to_owned()))
        } else {
            StateLocation::Dir(base.join(text))
        }
    }

    /// The directory, for a sled snapshot.
    pub fn dir(&self) -> Option<&std::path::Path> {
        match self {
            StateLocation::Dir(dir) => Some(dir),
            StateLocation::Postgres(_) => None,
        }
    }
}

impl fmt::Display for StateLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateLocation::Dir(dir) => write!(f, "{}", dir.display()),
            StateLocation::Postgres(url) => write!(f, "{url}"),
        }
    }
}

impl fmt::Debug for StateLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StateLocation({self})")
    }
}

/// A `postgres://` URL. It may carry a password, so it prints without one: `Display` and
/// `Debug` show `postgres://user:***@host/db`.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresUrl(String);

impl PostgresUrl {
    /// `text` as a PostgreSQL URL, if it is one.
    pub fn new(text: &str) -> Option<Self> {
        Self::is_url(text).then(|| Self(text.to_owned()))
    }

    /// Whether `text` is a PostgreSQL URL (`postgres://` or `postgresql://`).
    pub fn is_url(text: &str) -> bool {
        text.starts_with("postgres://") || text.starts_with("postgresql://")
    }

    /// The URL as given, password included: only for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        let (scheme, rest) = self.0.split_once("://").unwrap_or(("postgres", &self.0));
        // The user info ends at the last `@` before the path: a password may hold `@` and `/`
        // only percent-encoded, but be generous and split at the last `@` of the authority.
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let authority = match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.split_once(':') {
                    Some((user, _)) => format!("{user}:***{}", &authority[at..]),
                    None => authority.to_owned(),
                }
            }
            None => authority.to_owned(),
        };
        // `?password=…` is another way to write it.
        let tail = match tail.split_once('?') {
            Some((path, query)) => {
                let query: Vec<String> = query
                    .split('&')
                    .map(|pair| match pair.split_once('=') {
                        Some(("password", _)) => "password=***".to_owned(),
                        _ => pair.to_owned(),
                    })
                    .collect();
                format!("{path}?{}", query.join("&"))
            }
            None => tail.to_owned(),
        };
        format!("{scheme}://{authority}{tail}")
    }
}

impl fmt::Display for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PostgresUrl({})", self.redacted())
    }
}

/// What a change does to a user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// A user the server has no attributes for yet: `set_attr` with all of them.
    Create,
    /// A user whose attributes differ: `set_attr` for added or changed ones, `remove_attr`
    /// for removed ones.
    Update,
    /// A user removed from the config, pruned: `remove_attr` for all its attributes.
    Delete,
    /// A user removed from the config without prune: reported, left alone on the server.
    Orphaned,
    /// A user in doubt that is still declared: its full desired state is sent again with
    /// `set_attr`, and `remove_attr` removes every attribute it may hold that is not desired.
    Resend,
}

impl Action {
    /// The word used in JSON and text output.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::Orphaned => "orphaned",
            Action::Resend => "resend",
        }
    }

    /// Whether applying the change writes to the server.
    pub fn writes(self) -> bool {
        !matches!(self, Action::Orphaned)
    }
}

/// One attribute of one user, before and after the change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttrChange {
    /// The attribute.
    pub name: AttrName,
    /// The value in the snapshot, `None` when the attribute is being added.
    pub before: Option<AttrValue>,
    /// The value in the desired state, `None` when the attribute is being removed.
    pub after: Option<AttrValue>,
}

/// What the plan does to one user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The user.
    pub user: UserId,
    /// What happens to it.
    pub action: Action,
    /// The attributes involved, sorted by name. For an orphaned user these are the
    /// attributes left on the server (before and after equal). For a re-send: every desired
    /// attribute (before is the snapshot's last known value) and every attribute to remove.
    pub attrs: Vec<AttrChange>,
    /// Set when the user is in doubt (always for [`Action::Resend`]).
    pub in_doubt: Option<DoubtNote>,
}

impl Change {
    /// Whether applying the change calls `set_attr`: something is added or changed, or the
    /// user's desired state is re-sent. The call then carries the user's complete desired
    /// attribute set, so the result is right whether the server merges or replaces.
    pub fn sets(&self) -> bool {
        match self.action {
            Action::Delete | Action::Orphaned => false,
            Action::Resend => self.attrs.iter().any(|c| c.after.is_some()),
            Action::Create | Action::Update => self
                .attrs
                .iter()
                .any(|c| c.after.is_some() && c.after != c.before),
        }
    }

    /// What the server holds for this user once the change is applied, given the snapshot's
    /// `recorded` attributes: `None` for a deleted user (it leaves the snapshot).
    pub fn result(&self, recorded: &Attrs) -> Option<Attrs> {
        match self.action {
            Action::Delete => None,
            Action::Orphaned => Some(recorded.clone()),
            Action::Create | Action::Update => Some(recorded.with_changes(&self.attrs)),
            // A re-send lists every desired attribute: the result does not depend on the
            // snapshot, which may be wrong.
            Action::Resend => Some(Attrs::default().with_changes(&self.attrs)),
        }
    }

    /// Attribute names to send with `remove_attr` (removed).
    pub fn to_remove(&self) -> impl Iterator<Item = &AttrName> {
        self.attrs
            .iter()
            .filter(|c| c.before.is_some() && c.after.is_none())
            .map(|c| &c.name)
    }
}

/// How many users each action touches, plus those left unchanged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Users to create.
    pub create: usize,
    /// Users to update.
    pub update: usize,
    /// Users to delete (pruned).
    pub delete: usize,
    /// Users removed from the config but left on the server.
    pub orphaned: usize,
    /// Users whose attributes already match.
    pub unchanged: usize,
    /// Users in doubt whose desired state is sent again.
    pub resend: usize,
    /// Users in doubt, whatever their action (re-sent, deleted or orphaned).
    pub in_doubt: usize,
}

impl Summary {
    /// Users whose change writes to the server.
    pub fn writes(&self) -> usize {
        self.create + self.update + self.delete + self.resend
    }

    /// Whether applying the plan would write anything.
    pub fn has_writes(&self) -> bool {
        self.writes() > 0
    }
}

/// A user whose live attributes differ from the snapshot: changed outside attrsync.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drift {
    /// The user.
    pub user: UserId,
    /// Per attribute: `before` is the snapshot's value, `after` the live one.
    pub attrs: Vec<AttrChange>,
}

/// The difference between desired state and snapshot, and what it was computed from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The app the plan is for.
    pub sdkappid: u64,
    /// The snapshot serial the plan was computed against.
    pub snapshot_serial: u64,
    /// `sha256:<hex>` of the desired state the plan was computed from.
    pub desired_digest: String,
    /// Whether users removed from the config are deleted (prune) or only reported.
    pub prune: bool,
    /// Where the plan's writes go, with the admin UserSig: the server's base URL, or
    /// `embedded` ([`Target::key`]). Empty in a saved plan written before it was recorded.
    pub endpoint: String,
    /// Where the app's last write went, when that is not [`Plan::endpoint`]: the config's
    /// server changed, which a reviewer must see.
    pub previous_endpoint: Option<String>,
    /// The `--target` patterns of a partial plan: only users matching one are planned. Empty
    /// for a whole plan.
    pub targets: Vec<String>,
    /// Counts per action.
    pub summary: Summary,
    /// The changes: deletes (and orphans) first, then by user id.
    pub changes: Vec<Change>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn interned_values_share_one_allocation_and_are_still_validated() {
        use super::{AttrValue, Interner};
        let mut values = Interner::default();
        let a = values.value("Oslo").unwrap();
        let b = values.value("Oslo").unwrap();
        assert!(std::ptr::eq(a.as_str(), b.as_str()));
        let c = values.share(AttrValue::new("Oslo").unwrap());
        assert!(std::ptr::eq(a.as_str(), c.as_str()));
        assert!(values.value("").is_err());
        assert!(values.value("Os\nlo").is_err());
        assert_eq!(values.value("Lima").unwrap().as_str(), "Lima");
        // Equal sets, in any order, are one set; and still equal to a set built alone.
        let name = |n: &str| super::AttrName::new(n).unwrap();
        let one = values.attrs(vec![(name("city"), a.clone()), (name("tier"), c.clone())]);
        let two = values.attrs(vec![(name("tier"), c.clone()), (name("city"), b.clone())]);
        assert!(std::ptr::eq(
            one.iter().next().unwrap().0,
            two.iter().next().unwrap().0
        ));
        assert_eq!(
            one,
            super::Attrs::parse(&[("city", "Oslo"), ("tier", "Oslo")]).unwrap()
        );
    }

    #[test]
    fn plain_http_is_safe_only_on_this_machine() {
        use super::endpoint_is_safe;
        for safe in [
            "https://adminapisgp.im.qcloud.com",
            "https://10.0.0.8:8443/api",
            "http://127.0.0.1:8080",
            "http://127.8.9.10",
            "http://localhost:9000/",
            "http://[::1]:8080",
        ] {
            assert!(endpoint_is_safe(safe), "{safe}");
        }
        for unsafe_ in [
            "http://api.example.com",
            "http://10.0.0.8:8080",
            "http://127.0.0.1.evil.example",
            "http://localhost.evil.example:80",
            "http://127.0.0.1@evil.example",
            "http://[::2]:8080",
            "ftp://127.0.0.1",
        ] {
            assert!(!endpoint_is_safe(unsafe_), "{unsafe_}");
        }
    }

    #[test]
    fn a_postgres_url_never_prints_its_password() {
        use super::{PostgresUrl, StateLocation};
        let cases = [
            (
                "postgres://app:s3cr%40t@db:5432/attrsync",
                "postgres://app:***@db:5432/attrsync",
            ),
            (
                "postgresql://app@db/attrsync",
                "postgresql://app@db/attrsync",
            ),
            (
                "postgres://db/x?sslmode=require&password=hunter2",
                "postgres://db/x?sslmode=require&password=***",
            ),
            (
                "postgres://u:p@/x?host=/run/pg",
                "postgres://u:***@/x?host=/run/pg",
            ),
        ];
        for (url, shown) in cases {
            let location = StateLocation::parse(url, std::path::Path::new("/repo"));
            assert_eq!(location.to_string(), shown);
            assert_eq!(format!("{location:?}"), format!("StateLocation({shown})"));
            assert!(PostgresUrl::is_url(url));
        }
        assert_eq!(
            StateLocation::parse("state", std::path::Path::new("/repo")),
            StateLocation::Dir("/repo/state".into())
        );
    }

    use super::*;

    fn name(s: &str) -> AttrName {
        AttrName::new(s).unwrap()
    }

    fn value(s: &str) -> AttrValue {
        AttrValue::new(s).unwrap()
    }

    #[test]
    fn user_id_rules() {
        assert!(UserId::new("Mary").is_ok());
        assert!(UserId::new("").is_err());
        // The docs' own RegistrationID example is 36 bytes.
        assert!(UserId::new("379C2F0D-7E9A-4F5C-9B1A-2D3E4F5A6B7C").is_ok());
        assert!(UserId::new(&"x".repeat(MAX_USER_ID_BYTES)).is_ok());
        assert!(UserId::new(&"x".repeat(MAX_USER_ID_BYTES + 1)).is_err());
        assert!(UserId::new("a\tb").is_err());
        // 43 three-byte characters are 129 bytes: the limit is on bytes, not characters.
        assert!(UserId::new(&"中".repeat(43)).is_err());
    }

    #[test]
    fn value_rules() {
        assert!(AttrValue::new("").is_err());
        assert!(AttrValue::new(&"v".repeat(50)).is_ok());
        assert!(AttrValue::new(&"v".repeat(51)).is_err());
        assert!(AttrValue::new(&"é".repeat(26)).is_err());
        let err = AttrValue::new("gold\n").unwrap_err().to_string();
        assert!(err.contains("a line break"), "{err}");
        assert!(AttrValue::new("a\tb").is_err());
    }

    #[test]
    fn attrs_are_sorted_and_last_wins() {
        let attrs = Attrs::from_pairs(vec![
            (name("tier"), value("free")),
            (name("city"), value("Paris")),
            (name("tier"), value("gold")),
        ]);
        let pairs: Vec<_> = attrs
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        assert_eq!(pairs, [("city", "Paris"), ("tier", "gold")]);
        assert_eq!(attrs.get("tier").map(AttrValue::as_str), Some("gold"));
        assert_eq!(attrs.get("sex"), None);
    }

    #[test]
    fn with_changes_sets_and_removes() {
        let attrs = Attrs::from_pairs(vec![
            (name("city"), value("Paris")),
            (name("sex"), value("f")),
        ]);
        let changed = attrs.with_changes(&[
            AttrChange {
                name: name("city"),
                before: Some(value("Paris")),
                after: Some(value("Rome")),
            },
            AttrChange {
                name: name("sex"),
                before: Some(value("f")),
                after: None,
            },
            AttrChange {
                name: name("tier"),
                before: None,
                after: Some(value("gold")),
            },
        ]);
        let pairs: Vec<_> = changed
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        assert_eq!(pairs, [("city", "Rome"), ("tier", "gold")]);
    }

    #[test]
    fn user_map_reports_repeated_ids() {
        let id = |s: &str| UserId::new(s).unwrap();
        let map = UserMap::from_unsorted(vec![(id("b"), 1), (id("a"), 2)]).unwrap();
        assert_eq!(map.get("a"), Some(&2));
        assert_eq!(
            map.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        let err =
            UserMap::from_unsorted(vec![(id("b"), 1), (id("b"), 2), (id("b"), 3)]).unwrap_err();
        assert_eq!(err, [id("b")]);
        assert!(UserMap::from_sorted(vec![(id("b"), 1), (id("a"), 2)]).is_none());
    }

    #[test]
    fn regions_round_trip() {
        for (region, name, _) in Region::ALL {
            assert_eq!(Region::from_name(name), Some(region));
            assert_eq!(region.name(), name);
        }
        assert_eq!(
            Region::Singapore.base_url(),
            "https://adminapisgp.im.qcloud.com"
        );
        assert_eq!(Region::from_name("mars"), None);
    }
}
