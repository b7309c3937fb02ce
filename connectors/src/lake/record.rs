//! How each record type becomes a row of a lake file: its Arrow schema, its
//! column builders, its partition (`type=`, event or logical time) and the
//! columns that name people (for erasure).
//!
//! Every schema ends with two columns: `weft_time` (the logical time of the
//! change, an `Int64` of milliseconds) and `weft_diff` (its multiplicity,
//! `Int64`: `+1` inserted, `-1` retracted). Identifiers of derived records
//! (profiles, audience members) are text `kind:value`, as in every other sink.

use std::collections::{HashMap, HashSet};
use std::marker::PhantomData;
use std::sync::{Arc, OnceLock};

use arrow::array::{
    ArrayBuilder, ArrayRef, Int64Builder, StringBuilder, TimestampMillisecondBuilder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field as ArrowField, Schema, SchemaRef, TimeUnit};
use weft_dataflows::audience::{AggValue, Membership, TraitValue};
use weft_dataflows::event::{Event, Field};
use weft_dataflows::identity::{Identifier, ProfileChangeRecord, ProfileRecord, TraitRecord};

/// The column of the logical time of a change, in every lake schema.
pub const WEFT_TIME: &str = "weft_time";
/// The column of the multiplicity of a change, in every lake schema.
pub const WEFT_DIFF: &str = "weft_diff";

/// A set of identifiers to erase, from `kind:value` strings.
#[derive(Clone, Debug, Default)]
pub struct Identifiers {
    qualified: HashSet<String>,
    by_kind: HashMap<String, HashSet<String>>,
}

impl Identifiers {
    /// Parses `kind:value` strings (the value may itself contain `:`).
    ///
    /// Also returns the strings that have no `kind:` prefix: they cannot
    /// name anything, and the caller should say so.
    pub fn parse(identifiers: &[String]) -> (Identifiers, Vec<String>) {
        let mut set = Identifiers::default();
        let mut rejected = Vec::new();
        for id in identifiers {
            match id.split_once(':') {
                Some((kind, value)) if !kind.is_empty() => {
                    set.by_kind
                        .entry(kind.to_string())
                        .or_default()
                        .insert(value.to_string());
                    set.qualified.insert(id.clone());
                }
                _ => rejected.push(id.clone()),
            }
        }
        (set, rejected)
    }

    /// Adds every identifier of `other`.
    pub fn extend(&mut self, other: Identifiers) {
        self.qualified.extend(other.qualified);
        for (kind, values) in other.by_kind {
            self.by_kind.entry(kind).or_default().extend(values);
        }
    }

    /// No identifiers at all.
    pub fn is_empty(&self) -> bool {
        self.qualified.is_empty()
    }

    /// Whether `kind:value` is in the set.
    pub fn contains(&self, kind: &str, value: &str) -> bool {
        self.by_kind.get(kind).is_some_and(|v| v.contains(value))
    }

    /// Whether the text `kind:value` is in the set.
    pub fn contains_qualified(&self, text: &str) -> bool {
        self.qualified.contains(text)
    }

    /// Whether a value of an [`IdColumn`] names one of the identifiers.
    pub fn matches(&self, column: &IdColumn, value: &str) -> bool {
        match column {
            IdColumn::Value { kinds, .. } => kinds.iter().any(|k| self.contains(k, value)),
            IdColumn::Qualified { .. } => self.contains_qualified(value),
        }
    }

    /// The values to look up in an [`IdColumn`] (its bloom filter, say).
    pub fn probes<'a>(&'a self, column: &'a IdColumn) -> Vec<&'a str> {
        match column {
            IdColumn::Value { kinds, .. } => kinds
                .iter()
                .filter_map(|k| self.by_kind.get(*k))
                .flatten()
                .map(String::as_str)
                .collect(),
            IdColumn::Qualified { .. } => self.qualified.iter().map(String::as_str).collect(),
        }
    }
}

/// A text column that names people.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdColumn {
    /// The column holds bare values of identifiers of these kinds (an event's
    /// `user_id` holds `user_id` values; `previous_id` may be a `user_id` or
    /// an `anonymous_id`).
    Value {
        /// The column's name.
        column: &'static str,
        /// The identifier kinds its values may be.
        kinds: &'static [&'static str],
    },
    /// The column holds `kind:value` text.
    Qualified {
        /// The column's name.
        column: &'static str,
    },
}

impl IdColumn {
    /// The column's name.
    pub fn column(&self) -> &'static str {
        match self {
            IdColumn::Value { column, .. } | IdColumn::Qualified { column } => column,
        }
    }
}

/// Column builders for a batch of rows of `D`.
pub trait LakeColumns<D: ?Sized>: Default + Send {
    /// Appends one row: the record, the logical time and diff of its change.
    fn push(&mut self, record: &D, weft_time: i64, weft_diff: i64);
    /// Rows appended since the last [`LakeColumns::finish`].
    fn len(&self) -> usize;
    /// Whether no row waits.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The appended rows as arrays in schema order; the builders are emptied.
    fn finish(&mut self) -> Vec<ArrayRef>;
}

/// A record the Parquet lake can store.
pub trait LakeRecord: Sized {
    /// Its column builders.
    type Columns: LakeColumns<Self>;

    /// The Arrow schema of its files (ending with `weft_time`, `weft_diff`).
    fn schema() -> SchemaRef;

    /// The `type=` partition value: the Segment call type of an event; the
    /// output's name (`output`) for derived records.
    fn partition_type<'a>(&'a self, output: &'a str) -> &'a str;

    /// The time (ms since the epoch, UTC) that picks the `day=`/`hour=`
    /// partition: an event's `timestamp`; the logical time of the change
    /// (`time`) for derived records.
    fn partition_time_ms(&self, time: i64) -> i64;

    /// The column holding [`LakeRecord::partition_time_ms`] (a `Timestamp(ms)` or `Int64`).
    const TIME_COLUMN: &'static str;

    /// The columns that name people.
    const ID_COLUMNS: &'static [IdColumn];

    /// Calls `visit(i, value)` for each present value of `ID_COLUMNS[i]`.
    fn id_values(&self, visit: &mut dyn FnMut(usize, &str));

    /// Whether this record names one of `identifiers`.
    fn mentions(&self, identifiers: &Identifiers) -> bool {
        let mut found = false;
        self.id_values(&mut |i, value| {
            found = found || identifiers.matches(&Self::ID_COLUMNS[i], value);
        });
        found
    }

    /// Columns whose values rarely repeat (ids, event timestamps): written
    /// without a dictionary, which would only cost time. (JSON columns keep
    /// theirs: contexts and integrations repeat within a device or session.)
    const UNIQUE_COLUMNS: &'static [&'static str] = &[];

    /// For insert-only records (events): the column of the key that a
    /// retraction deletes by. `None` for change logs (derived records), whose
    /// retractions are rows with `weft_diff < 0`.
    const KEY_COLUMN: Option<&'static str> = None;

    /// The value of [`LakeRecord::KEY_COLUMN`].
    fn key(&self) -> Option<&str> {
        None
    }
}

fn text(name: &str, nullable: bool) -> ArrowField {
    ArrowField::new(name, DataType::Utf8, nullable)
}

fn timestamp(name: &str, nullable: bool) -> ArrowField {
    ArrowField::new(
        name,
        DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        nullable,
    )
}

fn change_fields() -> [ArrowField; 2] {
    [
        ArrowField::new(WEFT_TIME, DataType::Int64, false),
        ArrowField::new(WEFT_DIFF, DataType::Int64, false),
    ]
}

// ---------------------------------------------------------------------------
// Events.

/// The optional text fields of an event, as columns, in schema order.
const EVENT_TEXT: [(Field, &str); 9] = [
    (Field::Event, "event"),
    (Field::Name, "name"),
    (Field::Category, "category"),
    (Field::UserId, "user_id"),
    (Field::AnonymousId, "anonymous_id"),
    (Field::GroupId, "group_id"),
    (Field::PreviousId, "previous_id"),
    (Field::Email, "email"),
    (Field::DeviceId, "device_id"),
];

/// The nested objects of an event, as JSON text columns, in schema order.
const EVENT_JSON: [(Field, &str); 4] = [
    (Field::Properties, "properties"),
    (Field::Traits, "traits"),
    (Field::Context, "context"),
    (Field::Integrations, "integrations"),
];

/// Builders of event rows.
#[derive(Default)]
pub struct EventColumns {
    message_id: StringBuilder,
    kind: StringBuilder,
    text: [StringBuilder; 9],
    timestamp: TimestampMillisecondBuilder,
    original_timestamp: TimestampMillisecondBuilder,
    sent_at: TimestampMillisecondBuilder,
    received_at: TimestampMillisecondBuilder,
    json: [StringBuilder; 4],
    weft_time: Int64Builder,
    weft_diff: Int64Builder,
}

impl LakeColumns<Event> for EventColumns {
    fn push(&mut self, e: &Event, weft_time: i64, weft_diff: i64) {
        self.message_id.append_value(e.message_id());
        self.kind.append_value(e.kind.as_str());
        for (b, (field, _)) in self.text.iter_mut().zip(EVENT_TEXT) {
            b.append_option(e.get(field));
        }
        self.timestamp.append_value(e.time_ms);
        self.original_timestamp
            .append_option(e.original_timestamp_ms());
        self.sent_at.append_option(e.sent_at_ms());
        self.received_at.append_option(e.received_at_ms());
        for (b, (field, _)) in self.json.iter_mut().zip(EVENT_JSON) {
            b.append_option(e.get(field));
        }
        self.weft_time.append_value(weft_time);
        self.weft_diff.append_value(weft_diff);
    }

    fn len(&self) -> usize {
        self.message_id.len()
    }

    fn finish(&mut self) -> Vec<ArrayRef> {
        let utc = |b: &mut TimestampMillisecondBuilder| -> ArrayRef {
            Arc::new(b.finish().with_timezone("UTC"))
        };
        let mut out: Vec<ArrayRef> = vec![
            Arc::new(self.message_id.finish()),
            Arc::new(self.kind.finish()),
        ];
        out.extend(
            self.text
                .iter_mut()
                .map(|b| Arc::new(b.finish()) as ArrayRef),
        );
        out.push(utc(&mut self.timestamp));
        out.push(utc(&mut self.original_timestamp));
        out.push(utc(&mut self.sent_at));
        out.push(utc(&mut self.received_at));
        out.extend(
            self.json
                .iter_mut()
                .map(|b| Arc::new(b.finish()) as ArrayRef),
        );
        out.push(Arc::new(self.weft_time.finish()));
        out.push(Arc::new(self.weft_diff.finish()));
        out
    }
}

/// Event columns, in order: `message_id`, `type`, `event`, `name`,
/// `category`, `user_id`, `anonymous_id`, `group_id`, `previous_id`,
/// `email`, `device_id` (text), `timestamp`, `original_timestamp`,
/// `sent_at`, `received_at` (timestamps, ms, UTC), `properties`, `traits`,
/// `context`, `integrations` (JSON text), `weft_time`, `weft_diff`.
///
/// A retraction of an event deletes its row (by `message_id`, within the
/// partition of its `timestamp`).
impl LakeRecord for Event {
    type Columns = EventColumns;

    fn schema() -> SchemaRef {
        static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
        SCHEMA
            .get_or_init(|| {
                let mut fields = vec![text("message_id", false), text("type", false)];
                fields.extend(EVENT_TEXT.iter().map(|(_, name)| text(name, true)));
                fields.push(timestamp("timestamp", false));
                fields.push(timestamp("original_timestamp", true));
                fields.push(timestamp("sent_at", true));
                fields.push(timestamp("received_at", true));
                fields.extend(EVENT_JSON.iter().map(|(_, name)| text(name, true)));
                fields.extend(change_fields());
                Arc::new(Schema::new(fields))
            })
            .clone()
    }

    fn partition_type<'a>(&'a self, _output: &'a str) -> &'a str {
        self.kind.as_str()
    }

    fn partition_time_ms(&self, _time: i64) -> i64 {
        self.time_ms
    }

    const TIME_COLUMN: &'static str = "timestamp";

    const ID_COLUMNS: &'static [IdColumn] = &[
        IdColumn::Value {
            column: "user_id",
            kinds: &["user_id"],
        },
        IdColumn::Value {
            column: "anonymous_id",
            kinds: &["anonymous_id"],
        },
        IdColumn::Value {
            column: "email",
            kinds: &["email"],
        },
        IdColumn::Value {
            column: "device_id",
            kinds: &["device_id"],
        },
        // `previousId` is untyped in Segment's spec: a user id or an anonymous id.
        IdColumn::Value {
            column: "previous_id",
            kinds: &["user_id", "anonymous_id"],
        },
    ];

    fn id_values(&self, visit: &mut dyn FnMut(usize, &str)) {
        let fields = [
            Field::UserId,
            Field::AnonymousId,
            Field::Email,
            Field::DeviceId,
            Field::PreviousId,
        ];
        for (i, field) in fields.into_iter().enumerate() {
            if let Some(v) = self.get(field) {
                visit(i, v);
            }
        }
    }

    const UNIQUE_COLUMNS: &'static [&'static str] = &[
        "message_id",
        "timestamp",
        "original_timestamp",
        "sent_at",
        "received_at",
    ];

    const KEY_COLUMN: Option<&'static str> = Some("message_id");

    fn key(&self) -> Option<&str> {
        Some(self.message_id())
    }
}

// ---------------------------------------------------------------------------
// Derived records: text columns, then count columns.

/// A derived record's columns, for [`DerivedColumns`].
pub trait DerivedRecord {
    /// Text columns, in order.
    const TEXT: &'static [&'static str];
    /// Unsigned count columns, after the text columns.
    const COUNTS: &'static [&'static str] = &[];
    /// Appends the value of text column `i` to `out`.
    fn text(&self, i: usize, out: &mut String);
    /// The value of count column `i`.
    fn count(&self, i: usize) -> u64 {
        let _ = i;
        0
    }
}

/// Builders of derived rows.
pub struct DerivedColumns<D> {
    text: Vec<StringBuilder>,
    counts: Vec<UInt64Builder>,
    weft_time: Int64Builder,
    weft_diff: Int64Builder,
    scratch: String,
    _record: PhantomData<fn(&D)>,
}

impl<D: DerivedRecord> Default for DerivedColumns<D> {
    fn default() -> Self {
        DerivedColumns {
            text: D::TEXT.iter().map(|_| StringBuilder::new()).collect(),
            counts: D::COUNTS.iter().map(|_| UInt64Builder::new()).collect(),
            weft_time: Int64Builder::new(),
            weft_diff: Int64Builder::new(),
            scratch: String::new(),
            _record: PhantomData,
        }
    }
}

impl<D: DerivedRecord> LakeColumns<D> for DerivedColumns<D> {
    fn push(&mut self, record: &D, weft_time: i64, weft_diff: i64) {
        for (i, b) in self.text.iter_mut().enumerate() {
            self.scratch.clear();
            record.text(i, &mut self.scratch);
            b.append_value(&self.scratch);
        }
        for (i, b) in self.counts.iter_mut().enumerate() {
            b.append_value(record.count(i));
        }
        self.weft_time.append_value(weft_time);
        self.weft_diff.append_value(weft_diff);
    }

    fn len(&self) -> usize {
        self.weft_time.len()
    }

    fn finish(&mut self) -> Vec<ArrayRef> {
        let mut out: Vec<ArrayRef> = Vec::new();
        out.extend(
            self.text
                .iter_mut()
                .map(|b| Arc::new(b.finish()) as ArrayRef),
        );
        out.extend(
            self.counts
                .iter_mut()
                .map(|b| Arc::new(b.finish()) as ArrayRef),
        );
        out.push(Arc::new(self.weft_time.finish()));
        out.push(Arc::new(self.weft_diff.finish()));
        out
    }
}

fn derived_schema<D: DerivedRecord>() -> SchemaRef {
    let mut fields: Vec<ArrowField> = D::TEXT.iter().map(|n| text(n, false)).collect();
    fields.extend(
        D::COUNTS
            .iter()
            .map(|n| ArrowField::new(*n, DataType::UInt64, false)),
    );
    fields.extend(change_fields());
    Arc::new(Schema::new(fields))
}

fn qualified(out: &mut String, id: &Identifier) {
    out.push_str(&id.kind);
    out.push(':');
    out.push_str(&id.value);
}

/// Implements [`LakeRecord`] for a [`DerivedRecord`]: partitioned by the
/// output's name and the logical time; `$ids` are the text columns (by
/// index) that hold `kind:value` identifiers.
macro_rules! derived_lake_record {
    ($ty:ty, [$($id:literal),*]) => {
        impl LakeRecord for $ty {
            type Columns = DerivedColumns<$ty>;

            fn schema() -> SchemaRef {
                static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
                SCHEMA.get_or_init(derived_schema::<$ty>).clone()
            }

            fn partition_type<'a>(&'a self, output: &'a str) -> &'a str {
                output
            }

            fn partition_time_ms(&self, time: i64) -> i64 {
                time
            }

            const TIME_COLUMN: &'static str = WEFT_TIME;

            const ID_COLUMNS: &'static [IdColumn] = &[$(IdColumn::Qualified {
                column: <$ty as DerivedRecord>::TEXT[$id],
            }),*];

            fn id_values(&self, visit: &mut dyn FnMut(usize, &str)) {
                let mut buf = String::new();
                for (i, col) in [$($id),*].into_iter().enumerate() {
                    buf.clear();
                    self.text(col, &mut buf);
                    visit(i, &buf);
                }
            }
        }
    };
}

/// Audience memberships: `audience`, `profile` (`kind:value`).
impl DerivedRecord for Membership {
    const TEXT: &'static [&'static str] = &["audience", "profile"];
    fn text(&self, i: usize, out: &mut String) {
        out.push_str(if i == 0 {
            &self.audience
        } else {
            &self.profile
        })
    }
}
derived_lake_record!(Membership, [1]);

/// Computed traits: `trait` (its name), `profile` (`kind:value`), `value` (JSON text).
impl DerivedRecord for TraitValue {
    const TEXT: &'static [&'static str] = &["trait", "profile", "value"];
    fn text(&self, i: usize, out: &mut String) {
        match i {
            0 => out.push_str(&self.name),
            1 => out.push_str(&self.profile),
            _ => agg_json(&self.value, out),
        }
    }
}
derived_lake_record!(TraitValue, [1]);

/// Identities: `identifier` and `profile`, both `kind:value`.
impl DerivedRecord for ProfileRecord {
    const TEXT: &'static [&'static str] = &["identifier", "profile"];
    fn text(&self, i: usize, out: &mut String) {
        qualified(
            out,
            if i == 0 {
                &self.identifier
            } else {
                &self.profile
            },
        )
    }
}
derived_lake_record!(ProfileRecord, [0, 1]);

/// Profile traits: `profile` (`kind:value`), `key`, `value` (JSON text).
impl DerivedRecord for TraitRecord {
    const TEXT: &'static [&'static str] = &["profile", "key", "value"];
    fn text(&self, i: usize, out: &mut String) {
        match i {
            0 => qualified(out, &self.profile),
            1 => out.push_str(&self.key),
            _ => out.push_str(&self.value),
        }
    }
}
derived_lake_record!(TraitRecord, [0]);

/// Profile changes: `change` (`profile_merged` or `profile_split`), `from`
/// and `into` (`kind:value`), `identifiers` (how many moved).
impl DerivedRecord for ProfileChangeRecord {
    const TEXT: &'static [&'static str] = &["change", "from", "into"];
    const COUNTS: &'static [&'static str] = &["identifiers"];
    fn text(&self, i: usize, out: &mut String) {
        match i {
            0 => out.push_str(change_name(self)),
            1 => qualified(out, &self.from),
            _ => qualified(out, &self.into),
        }
    }
    fn count(&self, _i: usize) -> u64 {
        self.identifiers
    }
}
derived_lake_record!(ProfileChangeRecord, [1, 2]);

/// `profile_merged` or `profile_split`, as the record's JSON names it.
fn change_name(r: &ProfileChangeRecord) -> &'static str {
    match serde_json::to_value(r.kind) {
        Ok(serde_json::Value::String(s)) if s == "Merged" => "profile_merged",
        Ok(serde_json::Value::String(s)) if s == "Split" => "profile_split",
        _ => "profile_change",
    }
}

/// Appends a computed value as JSON text.
pub fn agg_json(v: &AggValue, out: &mut String) {
    match v {
        AggValue::Null => out.push_str("null"),
        AggValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        AggValue::Num(n) => match serde_json::Number::from_f64(*n) {
            Some(n) => out.push_str(&n.to_string()),
            None => out.push_str("null"),
        },
        AggValue::Str(s) => {
            out.push_str(&serde_json::Value::String(s.clone()).to_string());
        }
        AggValue::List(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                agg_json(item, out);
            }
            out.push(']');
        }
        AggValue::Json(j) => out.push_str(j),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_dataflows::event::{parse_event, ParseContext};

    #[test]
    fn mentions_follow_the_id_columns() {
        let e = parse_event(
            br#"{"type":"alias","userId":"u1","previousId":"a9","timestamp":"2026-01-01T00:00:00Z"}"#,
            &ParseContext::default(),
        )
        .unwrap();
        let ids =
            |s: &[&str]| Identifiers::parse(&s.iter().map(|x| x.to_string()).collect::<Vec<_>>()).0;
        assert!(e.mentions(&ids(&["user_id:u1"])));
        assert!(e.mentions(&ids(&["anonymous_id:a9"])));
        assert!(!e.mentions(&ids(&["email:u1", "user_id:a"])));
        let m = Membership {
            audience: "vip".into(),
            profile: "user_id:u1".into(),
        };
        assert!(m.mentions(&ids(&["user_id:u1"])));
        assert!(!m.mentions(&ids(&["user_id:u10"])));
        assert_eq!(Identifiers::parse(&["nokind".into()]).1, vec!["nokind"]);
    }

    #[test]
    fn computed_values_are_json() {
        let mut s = String::new();
        agg_json(
            &AggValue::List(vec![
                AggValue::Num(1.5),
                AggValue::Str("a\"b".into()),
                AggValue::Null,
                AggValue::Num(f64::NAN),
            ]),
            &mut s,
        );
        assert_eq!(s, r#"[1.5,"a\"b",null,null]"#);
    }
}
