//! Domain types shared by every layer: user ids, attributes, desired state, snapshot, plan.
//!
//! Nothing here does I/O. Collections are sorted vectors rather than maps: a config repo can
//! declare a million users, and a sorted `Vec` is a third of the memory of a `BTreeMap`, sorts
//! in one pass and lets the planner merge-join desired state and snapshot in linear time.

use std::fmt;
use std::sync::Arc;

/// Most bytes a user id may have (the API's account ids are short strings).
pub const MAX_USER_ID_BYTES: usize = 32;
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

/// A validated user id (the API's `To_Account`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserId(Box<str>);

impl UserId {
    /// Validates `raw` as a user id: non-empty, at most 32 bytes, no control characters.
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
        Ok(Self(raw.into()))
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

/// A validated attribute value: 1..=50 bytes of UTF-8.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AttrValue(Box<str>);

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
        Ok(Self(raw.into()))
    }

    /// The value as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
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

/// Why a raw string is not a valid id, name or value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(String);

impl InvalidValue {
    fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// One user's attributes, sorted by name, each name at most once.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Attrs(Box<[(AttrName, AttrValue)]>);

impl Attrs {
    /// Builds attributes from pairs in any order; a later pair for the same name wins.
    pub fn from_pairs(mut pairs: Vec<(AttrName, AttrValue)>) -> Self {
        // Stable sort keeps declaration order among equal names, so "last wins" is well defined.
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut deduped: Vec<(AttrName, AttrValue)> = Vec::with_capacity(pairs.len());
        for pair in pairs {
            match deduped.last_mut() {
                Some(last) if last.0 == pair.0 => *last = pair,
                _ => deduped.push(pair),
            }
        }
        Self(deduped.into_boxed_slice())
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

/// What attrsync last saw the server accept, per user, plus the serial of the last write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The users and their last applied attributes.
    pub users: UserMap<SnapshotEntry>,
    /// Grows with every committed write; a saved plan records it to detect staleness.
    pub serial: u64,
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
    /// Every region with its configuration name and API host (REFERENCE.md §1.2).
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
}

impl Action {
    /// The word used in JSON and text output.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::Orphaned => "orphaned",
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
    /// attributes left on the server (before and after equal).
    pub attrs: Vec<AttrChange>,
}

impl Change {
    /// Attributes to send with `set_attr` (added or changed).
    pub fn to_set(&self) -> impl Iterator<Item = (&AttrName, &AttrValue)> {
        self.attrs
            .iter()
            .filter_map(|c| match (&c.before, &c.after) {
                (before, Some(after)) if before.as_ref() != Some(after) => Some((&c.name, after)),
                _ => None,
            })
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
}

impl Summary {
    /// Whether applying the plan would write anything.
    pub fn has_writes(&self) -> bool {
        self.create + self.update + self.delete > 0
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
    /// Counts per action.
    pub summary: Summary,
    /// The changes: deletes (and orphans) first, then by user id.
    pub changes: Vec<Change>,
}

#[cfg(test)]
mod tests {
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
        assert!(UserId::new(&"x".repeat(32)).is_ok());
        assert!(UserId::new(&"x".repeat(33)).is_err());
        assert!(UserId::new("a\tb").is_err());
        // 11 three-byte characters are 33 bytes: the limit is on bytes, not characters.
        assert!(UserId::new(&"中".repeat(11)).is_err());
    }

    #[test]
    fn value_rules() {
        assert!(AttrValue::new("").is_err());
        assert!(AttrValue::new(&"v".repeat(50)).is_ok());
        assert!(AttrValue::new(&"v".repeat(51)).is_err());
        assert!(AttrValue::new(&"é".repeat(26)).is_err());
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
