//! Table and column names, as Segment's warehouses make them.
//!
//! * **snake_case**: letters are lowercased and a word boundary becomes `_`
//!   (`Order Completed` → `order_completed`, `firstName` → `first_name`,
//!   `userID` → `user_id`, `HTTPServer` → `http_server`); every run of
//!   characters that are not letters or digits becomes one `_`; leading and
//!   trailing `_` are dropped; a name starting with a digit gets a leading
//!   `_`; an empty result is `_`.
//! * **Flattening**: a nested object's leaves become columns named by the
//!   path joined with `_` before the conversion
//!   (`{"address":{"zipCode":…}}` → `address_zip_code`); `context` leaves
//!   are prefixed `context_` (`context.library.name` → `context_library_name`).
//! * **Reserved names**: a property or trait whose column would be a fixed
//!   column of its table (`id`, `user_id`, `timestamp`, `uuid_ts`; `event`
//!   in track tables, `name` in `pages`, …) or would start with `context_`
//!   gets a leading `_` (`id` → `_id`); a track
//!   event whose table would be one of Weft's tables (`tracks`, `users`,
//!   `weft_progress`, …) gets a leading `_` too.
//! * **Length**: PostgreSQL keeps 63 bytes of a name; longer names are cut
//!   there (on a character boundary).
//!
//! Two keys that map to the same column (`firstName` and `first_name`) share
//! it: within one record the one whose key sorts last wins.

use std::collections::HashMap;
use std::sync::Arc;

use super::tables::{Shape, RESERVED_TABLES};
use super::value::ColName;

/// The longest identifier PostgreSQL keeps, in bytes.
pub(crate) const MAX_IDENT_BYTES: usize = 63;

/// Converts a name to snake_case (see the module docs).
pub(crate) fn snake_case(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    let mut chars = s.chars().peekable();
    let mut prev: Option<char> = None;
    while let Some(c) = chars.next() {
        if c.is_alphanumeric() {
            if c.is_uppercase() {
                let boundary = match prev {
                    Some(p) if p.is_lowercase() || p.is_numeric() => true,
                    Some(p) if p.is_uppercase() => chars.peek().is_some_and(|n| n.is_lowercase()),
                    _ => false,
                };
                if boundary && !out.is_empty() && !out.ends_with('_') {
                    out.push('_');
                }
                out.extend(c.to_lowercase());
            } else {
                out.push(c);
            }
        } else if !out.is_empty() && !out.ends_with('_') {
            out.push('_');
        }
        prev = Some(c);
    }
    while out.ends_with('_') {
        out.pop();
    }
    if out.is_empty() {
        out.push('_');
    } else if out.starts_with(|c: char| c.is_numeric()) {
        out.insert(0, '_');
    }
    truncate_ident(out)
}

/// Cuts a name to [`MAX_IDENT_BYTES`] on a character boundary.
pub(crate) fn truncate_ident(mut s: String) -> String {
    if s.len() > MAX_IDENT_BYTES {
        let mut end = MAX_IDENT_BYTES;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// Prefixes `_` (and cuts to length).
fn prefixed(name: String) -> String {
    truncate_ident(format!("_{name}"))
}

/// Where an inferred column comes from: it decides the name's prefix and
/// the reserved names.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Origin {
    /// `context` of an event: named `context_…`.
    Context,
    /// `properties` or `traits` of a record stored in a table of this shape.
    Fields(&'static Shape),
}

impl Origin {
    fn cache_key(self) -> &'static str {
        match self {
            Origin::Context => "context",
            Origin::Fields(shape) => shape.name,
        }
    }
}

/// Above this many cached names the cache starts over (bounded memory).
const CACHE_LIMIT: usize = 100_000;

/// Caches the names derived from keys and event names (the same few
/// hundred come back on every event).
#[derive(Default)]
pub(crate) struct Namer {
    /// By [`Origin`] (its cache key), then key path.
    columns: HashMap<&'static str, HashMap<Box<str>, ColName>>,
    tables: HashMap<Box<str>, Arc<str>>,
}

impl Namer {
    /// The column for a flattened key path (segments joined with `_`).
    pub(crate) fn column(&mut self, origin: Origin, path: &str) -> ColName {
        let cache = self.columns.entry(origin.cache_key()).or_default();
        if let Some(c) = cache.get(path) {
            return c.clone();
        }
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        let col = ColName::Shared(Arc::from(column_name(origin, path)));
        cache.insert(path.into(), col.clone());
        col
    }

    /// The table of a track event.
    pub(crate) fn event_table(&mut self, event: &str) -> Arc<str> {
        if let Some(t) = self.tables.get(event) {
            return t.clone();
        }
        if self.tables.len() >= CACHE_LIMIT {
            self.tables.clear();
        }
        let table: Arc<str> = Arc::from(event_table_name(event));
        self.tables.insert(event.into(), table.clone());
        table
    }
}

/// The column of a key path (see the module docs).
pub(crate) fn column_name(origin: Origin, path: &str) -> String {
    match origin {
        Origin::Context => snake_case(&format!("context_{path}")),
        Origin::Fields(shape) => {
            let name = snake_case(path);
            if shape.is_fixed(&name) || name.starts_with("context_") {
                prefixed(name)
            } else {
                name
            }
        }
    }
}

/// The table of a track event named `event`.
pub(crate) fn event_table_name(event: &str) -> String {
    let name = snake_case(event);
    if RESERVED_TABLES.contains(&name.as_str()) {
        prefixed(name)
    } else {
        name
    }
}

/// Quotes an identifier for SQL.
pub(crate) fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_case_like_segment() {
        for (raw, want) in [
            ("Order Completed", "order_completed"),
            ("orderCompleted", "order_completed"),
            ("firstName", "first_name"),
            ("userID", "user_id"),
            ("HTTPServer", "http_server"),
            ("Step2Done", "step2_done"),
            ("already_snake", "already_snake"),
            ("  Spaces -- and  dashes ", "spaces_and_dashes"),
            ("$price (USD)", "price_usd"),
            ("1st Purchase", "_1st_purchase"),
            ("!!!", "_"),
            ("Über Straße", "über_straße"),
            ("_id", "id"),
        ] {
            assert_eq!(snake_case(raw), want, "{raw}");
        }
        let long = "x".repeat(70);
        assert_eq!(snake_case(&long).len(), MAX_IDENT_BYTES);
        let wide = "é".repeat(40);
        assert!(snake_case(&wide).len() <= MAX_IDENT_BYTES);
    }

    #[test]
    fn reserved_names_get_a_prefix() {
        use crate::warehouse::tables::{GROUP_SHAPE, PAGE_SHAPE, TRACK_SHAPE, USER_SHAPE};
        let track = Origin::Fields(&TRACK_SHAPE);
        assert_eq!(column_name(track, "id"), "_id");
        assert_eq!(column_name(track, "userId"), "_user_id");
        assert_eq!(column_name(track, "event"), "_event");
        assert_eq!(column_name(track, "context_ip"), "_context_ip");
        assert_eq!(column_name(track, "plan"), "plan");
        assert_eq!(column_name(track, "name"), "name");
        assert_eq!(column_name(Origin::Fields(&PAGE_SHAPE), "name"), "_name");
        assert_eq!(column_name(Origin::Fields(&GROUP_SHAPE), "name"), "name");
        assert_eq!(
            column_name(Origin::Context, "library_name"),
            "context_library_name"
        );
        let user = Origin::Fields(&USER_SHAPE);
        assert_eq!(column_name(user, "receivedAt"), "_received_at");
        assert_eq!(column_name(user, "uuid_ts"), "_uuid_ts");
        assert_eq!(column_name(user, "timestamp"), "timestamp");
        assert_eq!(event_table_name("Users"), "_users");
        assert_eq!(event_table_name("Weft Progress"), "_weft_progress");
        assert_eq!(event_table_name("Signed Up"), "signed_up");
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
        let mut n = Namer::default();
        let a = n.column(track, "addressZip");
        assert_eq!(&*a, "address_zip");
        assert_eq!(&*n.event_table("Order Completed"), "order_completed");
    }
}
