//! Which rows each record becomes.
//!
//! | record | table(s) | key |
//! |---|---|---|
//! | [`Event`] `track` | `tracks` and the event's own table (e.g. `order_completed`) | `id` = `messageId` |
//! | [`Event`] `identify` / `page` / `screen` / `group` / `alias` | `identifies` / `pages` / `screens` / `groups` / `aliases` | `id` |
//! | [`TraitRecord`] | `users`, one column per (flattened) trait | `id` = profile as `kind:value` |
//! | [`Membership`] | `audience_memberships(audience, profile, since)` | `(audience, profile)` |
//! | [`TraitValue`] | `computed_traits(profile, trait, value jsonb, received_at)` | `(profile, trait)` |
//!
//! Event rows hold the common fields (`id`, `anonymous_id`, `user_id`,
//! `received_at` — the event's `receivedAt`, else the logical time —,
//! `sent_at`, `original_timestamp`, `timestamp`), `context` flattened into
//! `context_…` columns, the call's own fields (`event` — the table name —
//! and `event_text` — the name as sent — for tracks, `name` and `category`
//! for pages, `group_id`, `previous_id`) and one column per flattened
//! property (track, page, screen) or trait (identify, group). `tracks` has
//! no property columns, as in Segment.

use serde_json::{Map, Value as Json};
use weft_dataflows::audience::{AggValue, Membership, TraitValue};
use weft_dataflows::event::{Event, EventType, Field};
use weft_dataflows::identity::TraitRecord;

use super::batch::{Batch, Row};
use super::naming::Origin;
use super::tables::{self, Shape};
use super::value::{pg_text, strip_nul, ColName, Val};

/// A record the warehouse can store.
///
/// Implemented for [`Event`], [`TraitRecord`] (the profile traits output),
/// [`Membership`] (audiences) and [`TraitValue`] (computed traits).
pub trait WarehouseRecord {
    /// Stages this record's rows: written if `insert`, else deleted; `time`
    /// is the logical time of the change.
    fn stage(&self, time: u64, insert: bool, batch: &mut Batch);
}

/// The table and shape of an event's main row.
fn event_table(kind: EventType) -> (&'static str, &'static Shape) {
    match kind {
        EventType::Track => (tables::TRACKS, &tables::TRACK_SHAPE),
        EventType::Identify => (tables::IDENTIFIES, &tables::IDENTIFY_SHAPE),
        EventType::Page => (tables::PAGES, &tables::PAGE_SHAPE),
        EventType::Screen => (tables::SCREENS, &tables::SCREEN_SHAPE),
        EventType::Group => (tables::GROUPS, &tables::GROUP_SHAPE),
        EventType::Alias => (tables::ALIASES, &tables::ALIAS_SHAPE),
    }
}

fn text(v: &str) -> Val {
    Val::Text(v.to_string())
}

/// Pushes a fixed text column if the field is present.
fn push_field(row: &mut Row, e: &Event, field: Field, column: &'static str) {
    if let Some(v) = e.get(field) {
        row.push((ColName::Static(column), text(v)));
    }
}

/// Flattens a JSON object's leaves into `row` (see [`super::naming`]);
/// `false` if `raw` is not a readable JSON object.
fn flatten_into(raw: &str, origin: Origin, batch: &mut Batch, row: &mut Row) -> bool {
    match serde_json::from_str::<Json>(raw) {
        Ok(Json::Object(m)) => {
            let mut path = String::new();
            walk(&m, &mut path, origin, batch, row);
            true
        }
        _ => false,
    }
}

fn walk(
    obj: &Map<String, Json>,
    path: &mut String,
    origin: Origin,
    batch: &mut Batch,
    row: &mut Row,
) {
    for (k, v) in obj {
        let len = path.len();
        if len > 0 {
            path.push('_');
        }
        path.push_str(k);
        match v {
            Json::Object(m) => walk(m, path, origin, batch, row),
            v => row.push((batch.namer.column(origin, path), Val::from_json(v))),
        }
        path.truncate(len);
    }
}

/// Flattens one of the event's objects, counting (and logging the first of)
/// those that cannot be read.
fn flatten_field(e: &Event, field: Field, origin: Origin, batch: &mut Batch, row: &mut Row) {
    if let Some(raw) = e.get(field) {
        if !flatten_into(raw, origin, batch, row) {
            if batch.unreadable == 0 {
                tracing::warn!(
                    message_id = e.message_id(),
                    "an event's {field:?} is not a readable JSON object; its columns are left empty (counted from now on)"
                );
            }
            batch.unreadable += 1;
        }
    }
}

/// The columns every event row has.
fn common_row(e: &Event, time: u64, batch: &mut Batch) -> Row {
    let mut row: Row = Vec::with_capacity(24);
    row.push((ColName::Static("id"), text(e.message_id())));
    push_field(&mut row, e, Field::AnonymousId, "anonymous_id");
    push_field(&mut row, e, Field::UserId, "user_id");
    let received = e
        .received_at_ms()
        .unwrap_or_else(|| i64::try_from(time).unwrap_or(i64::MAX));
    row.push((ColName::Static("received_at"), Val::millis(received)));
    if let Some(ms) = e.sent_at_ms() {
        row.push((ColName::Static("sent_at"), Val::millis(ms)));
    }
    if let Some(ms) = e.original_timestamp_ms() {
        row.push((ColName::Static("original_timestamp"), Val::millis(ms)));
    }
    row.push((ColName::Static("timestamp"), Val::millis(e.time_ms)));
    flatten_field(e, Field::Context, Origin::Context, batch, &mut row);
    row
}

impl WarehouseRecord for Event {
    fn stage(&self, time: u64, insert: bool, batch: &mut Batch) {
        let key = vec![pg_text(self.message_id()).into_owned()];
        let (table, shape) = event_table(self.kind);
        let own_table = match self.kind {
            EventType::Track => Some(
                batch
                    .namer
                    .event_table(self.get(Field::Event).unwrap_or("")),
            ),
            _ => None,
        };
        if !insert {
            if let Some(t) = own_table {
                batch.put(&t, &tables::TRACK_SHAPE, key.clone(), None);
            }
            batch.put(table, shape, key, None);
            return;
        }
        let mut row = common_row(self, time, batch);
        match self.kind {
            EventType::Track => {
                let own = own_table.expect("track events have a table");
                row.push((ColName::Static("event"), text(&own)));
                push_field(&mut row, self, Field::Event, "event_text");
                batch.put(table, shape, key.clone(), Some(row.clone()));
                flatten_field(
                    self,
                    Field::Properties,
                    Origin::Fields(shape),
                    batch,
                    &mut row,
                );
                batch.put(&own, &tables::TRACK_SHAPE, key, Some(row));
                return;
            }
            EventType::Identify => {
                flatten_field(self, Field::Traits, Origin::Fields(shape), batch, &mut row);
            }
            EventType::Page => {
                push_field(&mut row, self, Field::Name, "name");
                push_field(&mut row, self, Field::Category, "category");
                flatten_field(
                    self,
                    Field::Properties,
                    Origin::Fields(shape),
                    batch,
                    &mut row,
                );
            }
            EventType::Screen => {
                push_field(&mut row, self, Field::Name, "name");
                flatten_field(
                    self,
                    Field::Properties,
                    Origin::Fields(shape),
                    batch,
                    &mut row,
                );
            }
            EventType::Group => {
                push_field(&mut row, self, Field::GroupId, "group_id");
                flatten_field(self, Field::Traits, Origin::Fields(shape), batch, &mut row);
            }
            EventType::Alias => {
                push_field(&mut row, self, Field::PreviousId, "previous_id");
            }
        }
        batch.put(table, shape, key, Some(row));
    }
}

impl WarehouseRecord for TraitRecord {
    fn stage(&self, time: u64, insert: bool, batch: &mut Batch) {
        let profile = format!("{}:{}", self.profile.kind, self.profile.value);
        let mut columns: Row = Vec::new();
        match serde_json::from_str::<Json>(&self.value) {
            Ok(Json::Object(m)) => {
                let mut path = self.key.to_string();
                walk(
                    &m,
                    &mut path,
                    Origin::Fields(&tables::USER_SHAPE),
                    batch,
                    &mut columns,
                );
            }
            Ok(v) => columns.push((
                batch
                    .namer
                    .column(Origin::Fields(&tables::USER_SHAPE), &self.key),
                Val::from_json(&v),
            )),
            Err(_) => columns.push((
                batch
                    .namer
                    .column(Origin::Fields(&tables::USER_SHAPE), &self.key),
                Val::Text(self.value.to_string()),
            )),
        }
        batch.touch_user(&profile, time);
        for (column, val) in columns {
            batch.set_user(&profile, column, insert.then_some(val), time);
        }
    }
}

impl WarehouseRecord for Membership {
    fn stage(&self, time: u64, insert: bool, batch: &mut Batch) {
        let key = vec![
            pg_text(&self.audience).into_owned(),
            pg_text(&self.profile).into_owned(),
        ];
        let row = insert.then(|| {
            let t = i64::try_from(time).unwrap_or(i64::MAX);
            vec![
                (ColName::Static("audience"), text(&self.audience)),
                (ColName::Static("profile"), text(&self.profile)),
                (ColName::Static("since"), Val::millis(t)),
            ]
        });
        batch.put(tables::MEMBERSHIPS, &tables::MEMBERSHIP_SHAPE, key, row);
    }
}

/// A computed trait's value as JSON.
fn agg_json(v: &AggValue) -> Json {
    match v {
        AggValue::Null => Json::Null,
        AggValue::Bool(b) => Json::Bool(*b),
        AggValue::Num(n) => serde_json::Number::from_f64(*n).map_or(Json::Null, Json::Number),
        AggValue::Str(s) => Json::String(s.clone()),
        AggValue::List(l) => Json::Array(l.iter().map(agg_json).collect()),
        AggValue::Json(s) => serde_json::from_str(s).unwrap_or_else(|_| Json::String(s.clone())),
    }
}

impl WarehouseRecord for TraitValue {
    fn stage(&self, time: u64, insert: bool, batch: &mut Batch) {
        let key = vec![
            pg_text(&self.profile).into_owned(),
            pg_text(&self.name).into_owned(),
        ];
        let row = insert.then(|| {
            let mut value = agg_json(&self.value);
            strip_nul(&mut value);
            let t = i64::try_from(time).unwrap_or(i64::MAX);
            vec![
                (ColName::Static("profile"), text(&self.profile)),
                (ColName::Static("trait"), text(&self.name)),
                (ColName::Static("value"), Val::Jsonb(value.to_string())),
                (ColName::Static("received_at"), Val::millis(t)),
            ]
        });
        batch.put(tables::COMPUTED_TRAITS, &tables::COMPUTED_SHAPE, key, row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_dataflows::event::{parse_event, ParseContext};

    fn ev(s: &str) -> Event {
        parse_event(s.as_bytes(), &ParseContext::default()).unwrap()
    }

    fn row_of(b: &Batch, table: &str, id: &str) -> Option<Row> {
        b.tables[table].rows[&vec![id.to_string()]].clone()
    }

    fn get<'a>(row: &'a Row, col: &str) -> Option<&'a Val> {
        row.iter().find(|(c, _)| &**c == col).map(|(_, v)| v)
    }

    #[test]
    fn a_track_fills_tracks_and_its_own_table() {
        let mut b = Batch::default();
        let e = ev(
            r#"{"type":"track","event":"Order Completed","userId":"u1","messageId":"m1","timestamp":"2026-01-02T03:04:05Z","context":{"library":{"name":"js"},"ip":"1.2.3.4"},"properties":{"revenue":12.5,"id":"o1","shipping":{"zipCode":"123"},"at":"2026-01-02T03:04:05Z"}}"#,
        );
        e.stage(100, true, &mut b);
        let tracks = row_of(&b, "tracks", "m1").unwrap();
        assert_eq!(get(&tracks, "event"), Some(&text("order_completed")));
        assert_eq!(get(&tracks, "event_text"), Some(&text("Order Completed")));
        assert_eq!(get(&tracks, "context_library_name"), Some(&text("js")));
        assert_eq!(get(&tracks, "revenue"), None);
        let own = row_of(&b, "order_completed", "m1").unwrap();
        assert_eq!(get(&own, "revenue"), Some(&Val::Num("12.5".into())));
        assert_eq!(get(&own, "_id"), Some(&text("o1")));
        assert_eq!(get(&own, "id"), Some(&text("m1")));
        assert_eq!(get(&own, "shipping_zip_code"), Some(&text("123")));
        assert_eq!(
            get(&own, "at"),
            Some(&Val::Time("2026-01-02 03:04:05+00".into()))
        );
        assert_eq!(get(&own, "received_at"), Some(&Val::Millis(100)));
        e.stage(101, false, &mut b);
        assert_eq!(row_of(&b, "tracks", "m1"), None);
        assert_eq!(row_of(&b, "order_completed", "m1"), None);
    }

    #[test]
    fn traits_set_and_clear_user_columns() {
        let mut b = Batch::default();
        let t = TraitRecord {
            profile: weft_dataflows::identity::Identifier::new("user_id", "u1"),
            key: "address".into(),
            value: r#"{"city":"Paris","zip":75001}"#.into(),
        };
        t.stage(5, false, &mut b);
        let u = &b.users["user_id:u1"];
        assert_eq!(u.columns[&ColName::Static("address_city")], None);
        t.stage(5, true, &mut b);
        let u = &b.users["user_id:u1"];
        assert_eq!(
            u.columns[&ColName::Static("address_zip")],
            Some(Val::Int(75001))
        );
        assert_eq!(u.time, 5);
    }
}
