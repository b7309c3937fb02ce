//! The warehouse's tables: their fixed columns and primary keys.
//!
//! Every table also has `uuid_ts timestamptz NOT NULL DEFAULT now()`: when
//! the row was last written (the load time, as in Segment's warehouses; it
//! is the only column that differs between two runs over the same input).

use super::value::ColType::{self, Jsonb, Text, Timestamptz};

/// A table's fixed columns (created with it) and its primary key.
#[derive(Debug)]
pub(crate) struct Shape {
    /// Names the shape (for caches and messages).
    pub name: &'static str,
    /// Fixed columns, in creation order.
    pub fixed: &'static [(&'static str, ColType)],
    /// Primary-key columns (all `text`).
    pub key: &'static [&'static str],
    /// Whether rows carry inferred columns (properties, traits, context).
    pub inferred: bool,
}

impl Shape {
    /// Whether `column` is one of the fixed columns.
    pub(crate) fn is_fixed(&self, column: &str) -> bool {
        column == "uuid_ts" || self.fixed.iter().any(|(c, _)| *c == column)
    }
}

/// `identify` calls.
pub(crate) const IDENTIFIES: &str = "identifies";
/// `track` calls, all events (without properties).
pub(crate) const TRACKS: &str = "tracks";
/// `page` calls.
pub(crate) const PAGES: &str = "pages";
/// `screen` calls.
pub(crate) const SCREENS: &str = "screens";
/// `group` calls.
pub(crate) const GROUPS: &str = "groups";
/// `alias` calls.
pub(crate) const ALIASES: &str = "aliases";
/// One row per profile, a column per trait.
pub(crate) const USERS: &str = "users";
/// Audience memberships.
pub(crate) const MEMBERSHIPS: &str = "audience_memberships";
/// Computed-trait values.
pub(crate) const COMPUTED_TRAITS: &str = "computed_traits";
/// The sinks' committed frontiers.
pub(crate) const PROGRESS: &str = "weft_progress";

/// Table names a track event's table may not take.
pub(crate) const RESERVED_TABLES: &[&str] = &[
    IDENTIFIES,
    TRACKS,
    PAGES,
    SCREENS,
    GROUPS,
    ALIASES,
    USERS,
    MEMBERSHIPS,
    COMPUTED_TRAITS,
    PROGRESS,
];

/// `tracks` and each track event's own table.
pub(crate) static TRACK_SHAPE: Shape = Shape {
    name: "track",
    fixed: &[
        ("id", Text),
        ("anonymous_id", Text),
        ("user_id", Text),
        ("received_at", Timestamptz),
        ("sent_at", Timestamptz),
        ("original_timestamp", Timestamptz),
        ("timestamp", Timestamptz),
        ("event", Text),
        ("event_text", Text),
    ],
    key: &["id"],
    inferred: true,
};

/// `identifies`.
pub(crate) static IDENTIFY_SHAPE: Shape = Shape {
    name: "identify",
    fixed: &[
        ("id", Text),
        ("anonymous_id", Text),
        ("user_id", Text),
        ("received_at", Timestamptz),
        ("sent_at", Timestamptz),
        ("original_timestamp", Timestamptz),
        ("timestamp", Timestamptz),
    ],
    key: &["id"],
    inferred: true,
};

/// `pages`.
pub(crate) static PAGE_SHAPE: Shape = Shape {
    name: "page",
    fixed: &[
        ("id", Text),
        ("anonymous_id", Text),
        ("user_id", Text),
        ("received_at", Timestamptz),
        ("sent_at", Timestamptz),
        ("original_timestamp", Timestamptz),
        ("timestamp", Timestamptz),
        ("name", Text),
        ("category", Text),
    ],
    key: &["id"],
    inferred: true,
};

/// `screens`.
pub(crate) static SCREEN_SHAPE: Shape = Shape {
    name: "screen",
    fixed: &[
        ("id", Text),
        ("anonymous_id", Text),
        ("user_id", Text),
        ("received_at", Timestamptz),
        ("sent_at", Timestamptz),
        ("original_timestamp", Timestamptz),
        ("timestamp", Timestamptz),
        ("name", Text),
    ],
    key: &["id"],
    inferred: true,
};

/// `groups`.
pub(crate) static GROUP_SHAPE: Shape = Shape {
    name: "group",
    fixed: &[
        ("id", Text),
        ("anonymous_id", Text),
        ("user_id", Text),
        ("received_at", Timestamptz),
        ("sent_at", Timestamptz),
        ("original_timestamp", Timestamptz),
        ("timestamp", Timestamptz),
        ("group_id", Text),
    ],
    key: &["id"],
    inferred: true,
};

/// `aliases`.
pub(crate) static ALIAS_SHAPE: Shape = Shape {
    name: "alias",
    fixed: &[
        ("id", Text),
        ("anonymous_id", Text),
        ("user_id", Text),
        ("received_at", Timestamptz),
        ("sent_at", Timestamptz),
        ("original_timestamp", Timestamptz),
        ("timestamp", Timestamptz),
        ("previous_id", Text),
    ],
    key: &["id"],
    inferred: true,
};

/// `users`: `id` is the profile (`kind:value` of the identifier naming it),
/// `received_at` the logical time of its last change.
pub(crate) static USER_SHAPE: Shape = Shape {
    name: "user",
    fixed: &[("id", Text), ("received_at", Timestamptz)],
    key: &["id"],
    inferred: true,
};

/// `audience_memberships`: `since` is the logical time the profile entered.
pub(crate) static MEMBERSHIP_SHAPE: Shape = Shape {
    name: "membership",
    fixed: &[
        ("audience", Text),
        ("profile", Text),
        ("since", Timestamptz),
    ],
    key: &["audience", "profile"],
    inferred: false,
};

/// `computed_traits`: `value` as JSON, `received_at` the logical time of the change.
pub(crate) static COMPUTED_SHAPE: Shape = Shape {
    name: "computed",
    fixed: &[
        ("profile", Text),
        ("trait", Text),
        ("value", Jsonb),
        ("received_at", Timestamptz),
    ],
    key: &["profile", "trait"],
    inferred: false,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fixed_text_columns() {
        for shape in [
            &TRACK_SHAPE,
            &IDENTIFY_SHAPE,
            &PAGE_SHAPE,
            &SCREEN_SHAPE,
            &GROUP_SHAPE,
            &ALIAS_SHAPE,
            &USER_SHAPE,
            &MEMBERSHIP_SHAPE,
            &COMPUTED_SHAPE,
        ] {
            for k in shape.key {
                assert!(shape.fixed.contains(&(*k, Text)), "{} {k}", shape.name);
            }
            assert!(shape.is_fixed("uuid_ts") && !shape.is_fixed("plan"));
        }
    }
}
