//! The PostgreSQL warehouse sink against a real server: Segment-style tables
//! and columns, schema evolution, users, memberships, computed traits,
//! retractions, and exactly-once output across crashes before and after
//! commits, a killed connection and early (pre-commit) flushes.
//!
//! The server's URL comes from `WEFT_PG_URL`; without it the tests start a
//! private cluster with `scripts/postgres.sh start` (installing PostgreSQL if
//! missing). Every test works in its own schema and drops it at the end.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use postgres::{Client, NoTls};
use weft_connectors::sink::Sink;
use weft_connectors::warehouse::{WarehouseConfig, WarehouseRecord, WarehouseSink};
use weft_dataflows::audience::{AggValue, Membership, TraitValue};
use weft_dataflows::event::{parse_event, Event, ParseContext};
use weft_dataflows::identity::{Identifier, TraitRecord};

// ---------------------------------------------------------------------------
// Support: the server, schemas that drop themselves, reading tables back.

/// The server's URL, starting the private cluster if `WEFT_PG_URL` is unset.
/// `None` (after a loud message) only if it cannot be started outside CI.
fn pg_url() -> Option<String> {
    static URL: OnceLock<Option<String>> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(u) = std::env::var("WEFT_PG_URL") {
            if !u.trim().is_empty() {
                return Some(u);
            }
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/postgres.sh");
        let failure = match Command::new("bash").arg(script).arg("start").output() {
            Ok(o) if o.status.success() => {
                let stdout = String::from_utf8_lossy(&o.stdout);
                if let Some(u) = stdout.lines().find_map(|l| l.strip_prefix("WEFT_PG_URL=")) {
                    return Some(u.trim().to_string());
                }
                format!("scripts/postgres.sh start printed no WEFT_PG_URL line: {stdout}")
            }
            Ok(o) => format!(
                "scripts/postgres.sh start failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => format!("cannot run scripts/postgres.sh: {e}"),
        };
        if std::env::var_os("CI").is_some() {
            panic!("no PostgreSQL under CI: {failure}");
        }
        eprintln!("\n!!!!!!!!!! SKIPPING warehouse tests: no PostgreSQL. {failure}\n");
        None
    })
    .clone()
}

macro_rules! url_or_skip {
    () => {
        match pg_url() {
            Some(u) => u,
            None => return,
        }
    };
}

fn connect(url: &str) -> Client {
    let mut c = Client::connect(url, NoTls).expect("connect to the test server");
    c.batch_execute("SET TimeZone = 'UTC'").unwrap();
    c
}

/// A uniquely named schema, dropped (with everything in it) on drop.
struct TestSchema {
    url: String,
    name: String,
}

impl TestSchema {
    fn new(url: &str, prefix: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!(
            "weft_test_{prefix}_{}_{}_{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        TestSchema {
            url: url.to_string(),
            name,
        }
    }

    /// A sink config; the sink name is unique across schemas (it is also the
    /// connection's application_name).
    fn config(&self, sink: &str) -> WarehouseConfig {
        WarehouseConfig::new(format!("{sink}-{}", self.name), &self.url, &self.name)
    }

    fn open<D: WarehouseRecord>(&self, sink: &str) -> WarehouseSink<D> {
        WarehouseSink::open(&self.config(sink)).expect("open the sink")
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        match Client::connect(&self.url, NoTls) {
            Ok(mut c) => {
                if let Err(e) =
                    c.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name))
                {
                    eprintln!("cannot drop test schema {}: {e}", self.name);
                }
            }
            Err(e) => eprintln!("cannot drop test schema {}: {e}", self.name),
        }
    }
}

/// Every data table's rows, sorted, each as `column=text` pairs of its
/// non-NULL columns (without `uuid_ts`, the load time). Text forms do not
/// depend on a column's type (see `warehouse::value`), so two runs compare
/// equal when their rows hold the same values, whichever commits made
/// their columns.
type Dump = BTreeMap<String, Vec<String>>;

fn tables(c: &mut Client, schema: &str) -> Vec<String> {
    c.query(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 \
         AND table_name <> 'weft_progress' ORDER BY 1",
        &[&schema],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn dump(url: &str, schema: &str) -> Dump {
    let mut c = connect(url);
    let mut out = Dump::new();
    for t in tables(&mut c, schema) {
        let cols: Vec<String> = columns(url, schema, &t)
            .into_keys()
            .filter(|c| c != "uuid_ts")
            .collect();
        let pairs: Vec<String> = cols
            .iter()
            .map(|c| format!("'{c}=' || \"{c}\"::text"))
            .collect();
        let mut rows: Vec<String> = c
            .query(
                format!(
                    "SELECT concat_ws(' | ', {}) FROM \"{schema}\".\"{t}\"",
                    pairs.join(", ")
                )
                .as_str(),
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        rows.sort();
        out.insert(t, rows);
    }
    out
}

/// Asserts two dumps are equal, showing only the rows that differ.
fn assert_same(got: &Dump, expected: &Dump, what: &str) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "{what}: tables"
    );
    for (t, rows) in expected {
        let (g, e): (BTreeSet<&String>, BTreeSet<&String>) =
            (got[t].iter().collect(), rows.iter().collect());
        let missing: Vec<_> = e.difference(&g).collect();
        let extra: Vec<_> = g.difference(&e).collect();
        assert!(
            missing.is_empty() && extra.is_empty() && got[t].len() == rows.len(),
            "{what}: table {t}: missing {missing:#?}, unexpected {extra:#?}, {} rows instead of {}",
            got[t].len(),
            rows.len()
        );
    }
}

/// `column → data type` of a table.
fn columns(url: &str, schema: &str, table: &str) -> BTreeMap<String, String> {
    connect(url)
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = $1 AND table_name = $2",
            &[&schema, &table],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// One row as JSON (without `uuid_ts`), by primary key `id`.
fn row(url: &str, schema: &str, table: &str, id: &str) -> Option<serde_json::Value> {
    connect(url)
        .query_opt(
            format!("SELECT (to_jsonb(t) - 'uuid_ts')::text FROM \"{schema}\".\"{table}\" t WHERE id = $1")
                .as_str(),
            &[&id],
        )
        .unwrap()
        .map(|r| serde_json::from_str(&r.get::<_, String>(0)).unwrap())
}

fn count(url: &str, schema: &str, table: &str) -> i64 {
    connect(url)
        .query_one(
            format!("SELECT count(*) FROM \"{schema}\".\"{table}\"").as_str(),
            &[],
        )
        .unwrap()
        .get(0)
}

fn ev(json: &str) -> Event {
    parse_event(json.as_bytes(), &ParseContext::default()).unwrap_or_else(|e| panic!("{json}: {e}"))
}

fn trait_rec(profile: &str, key: &str, value: &str) -> TraitRecord {
    TraitRecord {
        profile: Identifier::new("user_id", profile),
        key: key.into(),
        value: value.into(),
    }
}

/// Sorts and consolidates one time's changes, as the engine hands them over.
fn consolidate<D: Ord>(mut updates: Vec<(D, isize)>) -> Vec<(D, isize)> {
    updates.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out: Vec<(D, isize)> = Vec::with_capacity(updates.len());
    for (d, n) in updates {
        match out.last_mut() {
            Some(last) if last.0 == d => last.1 += n,
            _ => out.push((d, n)),
        }
    }
    out.retain(|(_, n)| *n != 0);
    out
}

// ---------------------------------------------------------------------------
// Tables and columns.

#[test]
fn every_call_type_lands_in_its_table_with_its_columns() {
    let url = url_or_skip!();
    let s = TestSchema::new(&url, "calls");
    let mut sink: WarehouseSink<Event> = s.open("events");
    let events = vec![
        (
            ev(
                r#"{"type":"track","event":"Order Completed","userId":"u1","anonymousId":"a1","messageId":"t1","timestamp":"2026-01-02T03:04:05.678Z","sentAt":"2026-01-02T03:04:06Z","receivedAt":"2026-01-02T03:04:07Z","context":{"library":{"name":"analytics.js","version":"2.1"},"ip":"10.0.0.1"},"properties":{"revenue":12.5,"quantity":3,"gift":true,"orderId":"o-1","shipping":{"zipCode":"75001","express":false},"deliveredAt":"2026-01-05T10:00:00Z","tags":["a","b"],"id":"prop-id","note":"tab\there\nnewline \\ back"}}"#,
            ),
            1,
        ),
        (
            ev(
                r#"{"type":"identify","userId":"u1","messageId":"i1","timestamp":"2026-01-02T03:04:05Z","traits":{"email":"u1@example.com","firstName":"Ada","age":36}}"#,
            ),
            1,
        ),
        (
            ev(
                r#"{"type":"page","anonymousId":"a2","messageId":"p1","name":"Pricing","category":"Docs","timestamp":"2026-01-02T03:04:05Z","properties":{"url":"https://x.io/pricing","referrer":null}}"#,
            ),
            1,
        ),
        (
            ev(
                r#"{"type":"screen","userId":"u2","messageId":"s1","name":"Cart","timestamp":"2026-01-02T03:04:05Z","properties":{"items":2}}"#,
            ),
            1,
        ),
        (
            ev(
                r#"{"type":"group","userId":"u1","groupId":"acme","messageId":"g1","timestamp":"2026-01-02T03:04:05Z","traits":{"name":"Acme","employees":500}}"#,
            ),
            1,
        ),
        (
            ev(
                r#"{"type":"alias","userId":"u1","previousId":"a1","messageId":"al1","timestamp":"2026-01-02T03:04:05Z"}"#,
            ),
            1,
        ),
    ];
    sink.write(1000, &consolidate(events)).unwrap();
    sink.commit(&[1001]).unwrap();
    assert_eq!(sink.committed_frontier(), vec![1001]);

    let mut c = connect(&url);
    assert_eq!(
        tables(&mut c, &s.name),
        [
            "aliases",
            "groups",
            "identifies",
            "order_completed",
            "pages",
            "screens",
            "tracks"
        ]
    );
    // The event's own table: common columns, context, flattened properties, inferred types.
    let cols = columns(&url, &s.name, "order_completed");
    for (c, t) in [
        ("id", "text"),
        ("user_id", "text"),
        ("anonymous_id", "text"),
        ("timestamp", "timestamp with time zone"),
        ("sent_at", "timestamp with time zone"),
        ("received_at", "timestamp with time zone"),
        ("uuid_ts", "timestamp with time zone"),
        ("event", "text"),
        ("event_text", "text"),
        ("context_library_name", "text"),
        ("context_library_version", "text"),
        ("context_ip", "text"),
        ("revenue", "numeric"),
        ("quantity", "bigint"),
        ("gift", "boolean"),
        ("order_id", "text"),
        ("shipping_zip_code", "text"),
        ("shipping_express", "boolean"),
        ("delivered_at", "timestamp with time zone"),
        ("tags", "text"),
        ("_id", "text"),
        ("note", "text"),
    ] {
        assert_eq!(
            cols.get(c).map(String::as_str),
            Some(t),
            "order_completed.{c} in {cols:?}"
        );
    }
    let r = row(&url, &s.name, "order_completed", "t1").unwrap();
    assert_eq!(r["event"], "order_completed");
    assert_eq!(r["event_text"], "Order Completed");
    assert_eq!(r["revenue"], 12.5);
    assert_eq!(r["quantity"], 3);
    assert_eq!(r["gift"], true);
    assert_eq!(r["shipping_zip_code"], "75001");
    assert_eq!(r["tags"], r#"["a","b"]"#);
    assert_eq!(r["_id"], "prop-id");
    assert_eq!(r["note"], "tab\there\nnewline \\ back");
    assert_eq!(r["timestamp"], "2026-01-02T03:04:05.678+00:00");
    assert_eq!(r["received_at"], "2026-01-02T03:04:07+00:00");
    assert_eq!(r["delivered_at"], "2026-01-05T10:00:00+00:00");
    assert_eq!(r["context_library_name"], "analytics.js");
    // `tracks` has the event without its properties.
    let tracks = columns(&url, &s.name, "tracks");
    assert!(
        tracks.contains_key("context_ip") && !tracks.contains_key("revenue"),
        "{tracks:?}"
    );
    assert_eq!(
        row(&url, &s.name, "tracks", "t1").unwrap()["event_text"],
        "Order Completed"
    );
    // The other calls.
    let i = row(&url, &s.name, "identifies", "i1").unwrap();
    assert_eq!(
        (&i["email"], &i["first_name"], &i["age"]),
        (&"u1@example.com".into(), &"Ada".into(), &36.into())
    );
    let p = row(&url, &s.name, "pages", "p1").unwrap();
    assert_eq!(
        (&p["name"], &p["category"], &p["url"]),
        (
            &"Pricing".into(),
            &"Docs".into(),
            &"https://x.io/pricing".into()
        )
    );
    assert!(
        !columns(&url, &s.name, "pages").contains_key("referrer"),
        "an only-null property makes no column"
    );
    assert_eq!(row(&url, &s.name, "screens", "s1").unwrap()["items"], 2);
    let g = row(&url, &s.name, "groups", "g1").unwrap();
    assert_eq!(
        (&g["group_id"], &g["name"], &g["employees"]),
        (&"acme".into(), &"Acme".into(), &500.into())
    );
    assert_eq!(
        row(&url, &s.name, "aliases", "al1").unwrap()["previous_id"],
        "a1"
    );
    assert_eq!(sink.stats().rows, 7);
}

#[test]
fn new_properties_add_columns_and_conflicting_types_widen() {
    let url = url_or_skip!();
    let s = TestSchema::new(&url, "evolve");
    let mut sink: WarehouseSink<Event> = s.open("events");
    let track = |id: &str, props: &str| {
        ev(&format!(
            r#"{{"type":"track","event":"Score","userId":"u","messageId":"{id}","timestamp":"2026-01-01T00:00:00Z","properties":{props}}}"#
        ))
    };
    sink.write(
        1,
        &[(
            track(
                "m1",
                r#"{"points":10,"when":"2026-01-01T00:00:00Z","ok":true}"#,
            ),
            1,
        )],
    )
    .unwrap();
    sink.commit(&[2]).unwrap();
    let cols = columns(&url, &s.name, "score");
    assert_eq!(cols["points"], "bigint");
    assert_eq!(cols["when"], "timestamp with time zone");
    assert_eq!(cols["ok"], "boolean");
    assert!(!cols.contains_key("level"));

    // A new property adds a column; a fraction widens bigint to numeric.
    sink.write(2, &[(track("m2", r#"{"points":2.5,"level":"gold"}"#), 1)])
        .unwrap();
    sink.commit(&[3]).unwrap();
    let cols = columns(&url, &s.name, "score");
    assert_eq!(cols["points"], "numeric");
    assert_eq!(cols["level"], "text");
    assert_eq!(row(&url, &s.name, "score", "m1").unwrap()["points"], 10);
    assert_eq!(row(&url, &s.name, "score", "m2").unwrap()["points"], 2.5);
    assert_eq!(
        row(&url, &s.name, "score", "m1").unwrap()["level"],
        serde_json::Value::Null
    );

    // Conflicts widen to text, keeping the stored values as text; in one
    // commit the batch's own values decide too (a string and a number).
    sink.write(
        3,
        &[(
            track("m3", r#"{"points":"many","when":"yesterday","ok":1}"#),
            1,
        )],
    )
    .unwrap();
    sink.write(
        4,
        &[
            (track("m4", r#"{"fresh":1}"#), 1),
            (track("m5", r#"{"fresh":"x"}"#), 1),
        ],
    )
    .unwrap();
    sink.commit(&[5]).unwrap();
    let cols = columns(&url, &s.name, "score");
    for c in ["points", "when", "ok", "fresh"] {
        assert_eq!(cols[c], "text", "{c}");
    }
    let m1 = row(&url, &s.name, "score", "m1").unwrap();
    assert_eq!(
        (&m1["points"], &m1["when"], &m1["ok"]),
        (
            &"10".into(),
            &"2026-01-01 00:00:00+00".into(),
            &"true".into()
        )
    );
    assert_eq!(row(&url, &s.name, "score", "m2").unwrap()["points"], "2.5");
    let m3 = row(&url, &s.name, "score", "m3").unwrap();
    assert_eq!(
        (&m3["points"], &m3["when"], &m3["ok"]),
        (&"many".into(), &"yesterday".into(), &"1".into())
    );
    assert_eq!(row(&url, &s.name, "score", "m4").unwrap()["fresh"], "1");

    // A reopened sink reads the evolved schema and keeps writing into it.
    drop(sink);
    let mut sink: WarehouseSink<Event> = s.open("events");
    sink.write(5, &[(track("m6", r#"{"points":7,"level":3}"#), 1)])
        .unwrap();
    sink.commit(&[6]).unwrap();
    let m6 = row(&url, &s.name, "score", "m6").unwrap();
    assert_eq!((&m6["points"], &m6["level"]), (&"7".into(), &"3".into()));
}

#[test]
fn users_are_upserted_per_profile_and_deleted_when_empty() {
    let url = url_or_skip!();
    let s = TestSchema::new(&url, "users");
    let mut sink: WarehouseSink<TraitRecord> = s.open("traits");
    sink.write(
        10,
        &consolidate(vec![
            (trait_rec("u1", "email", r#""u1@x.io""#), 1),
            (trait_rec("u1", "plan", r#""free""#), 1),
            (
                trait_rec("u1", "address", r#"{"city":"Paris","zipCode":"75001"}"#),
                1,
            ),
            (trait_rec("u2", "email", r#""u2@x.io""#), 1),
            (trait_rec("u2", "logins", "3"), 1),
        ]),
    )
    .unwrap();
    sink.commit(&[11]).unwrap();
    let u1 = row(&url, &s.name, "users", "user_id:u1").unwrap();
    assert_eq!(
        (
            &u1["email"],
            &u1["plan"],
            &u1["address_city"],
            &u1["address_zip_code"]
        ),
        (
            &"u1@x.io".into(),
            &"free".into(),
            &"Paris".into(),
            &"75001".into()
        )
    );
    assert_eq!(u1["received_at"], "1970-01-01T00:00:00.01+00:00");
    assert_eq!(columns(&url, &s.name, "users")["logins"], "bigint");

    // A changed trait updates its column only; an object trait that loses a
    // key clears that column.
    sink.write(
        20,
        &consolidate(vec![
            (trait_rec("u1", "plan", r#""free""#), -1),
            (trait_rec("u1", "plan", r#""pro""#), 1),
            (
                trait_rec("u1", "address", r#"{"city":"Paris","zipCode":"75001"}"#),
                -1,
            ),
            (trait_rec("u1", "address", r#"{"city":"Lyon"}"#), 1),
            (trait_rec("u2", "email", r#""u2@x.io""#), -1),
        ]),
    )
    .unwrap();
    sink.commit(&[21]).unwrap();
    let u1 = row(&url, &s.name, "users", "user_id:u1").unwrap();
    assert_eq!(
        (
            &u1["email"],
            &u1["plan"],
            &u1["address_city"],
            &u1["address_zip_code"]
        ),
        (
            &"u1@x.io".into(),
            &"pro".into(),
            &"Lyon".into(),
            &serde_json::Value::Null
        )
    );
    let u2 = row(&url, &s.name, "users", "user_id:u2").unwrap();
    assert_eq!(
        (&u2["email"], &u2["logins"]),
        (&serde_json::Value::Null, &3.into())
    );

    // The last trait of a profile removed: the row goes.
    sink.write(30, &[(trait_rec("u2", "logins", "3"), -1)])
        .unwrap();
    sink.commit(&[31]).unwrap();
    assert_eq!(row(&url, &s.name, "users", "user_id:u2"), None);
    assert_eq!(count(&url, &s.name, "users"), 1);
}

#[test]
fn memberships_enter_and_exit_and_computed_traits_follow_their_values() {
    let url = url_or_skip!();
    let s = TestSchema::new(&url, "audiences");
    let mut members: WarehouseSink<Membership> = s.open("audiences");
    let mut computed: WarehouseSink<TraitValue> = s.open("computed");
    let m = |a: &str, p: &str| Membership {
        audience: a.into(),
        profile: p.into(),
    };
    let tv = |p: &str, v: AggValue| TraitValue {
        name: "orders_30d".into(),
        profile: p.into(),
        value: v,
    };
    members
        .write(
            1_767_225_600_000,
            &consolidate(vec![
                (m("vip", "user_id:u1"), 1),
                (m("vip", "user_id:u2"), 1),
                (m("churn", "user_id:u1"), 1),
            ]),
        )
        .unwrap();
    computed
        .write(
            1_767_225_600_000,
            &consolidate(vec![
                (tv("user_id:u1", AggValue::Num(3.0)), 1),
                (tv("user_id:u2", AggValue::Str("n/a".into())), 1),
            ]),
        )
        .unwrap();
    members.commit(&[1_767_225_600_001]).unwrap();
    computed.commit(&[1_767_225_600_001]).unwrap();
    let read = |sql: &str| -> Vec<String> {
        connect(&url)
            .query(sql.replace("S.", &format!("\"{}\".", s.name)).as_str(), &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    assert_eq!(
        read("SELECT audience || '/' || profile || '@' || since::text FROM S.audience_memberships ORDER BY 1"),
        ["churn/user_id:u1@2026-01-01 00:00:00+00", "vip/user_id:u1@2026-01-01 00:00:00+00", "vip/user_id:u2@2026-01-01 00:00:00+00"]
    );
    members
        .write(1_767_225_660_000, &[(m("vip", "user_id:u2"), -1)])
        .unwrap();
    members
        .write(1_767_225_720_000, &[(m("vip", "user_id:u3"), 1)])
        .unwrap();
    members.commit(&[1_767_225_720_001]).unwrap();
    assert_eq!(
        read("SELECT audience || '/' || profile || '@' || since::text FROM S.audience_memberships ORDER BY 1"),
        ["churn/user_id:u1@2026-01-01 00:00:00+00", "vip/user_id:u1@2026-01-01 00:00:00+00", "vip/user_id:u3@2026-01-01 00:02:00+00"]
    );
    assert_eq!(
        read("SELECT profile || '=' || value::text FROM S.computed_traits ORDER BY 1"),
        ["user_id:u1=3.0", "user_id:u2=\"n/a\""]
    );
    computed
        .write(
            1_767_225_660_000,
            &consolidate(vec![
                (tv("user_id:u1", AggValue::Num(3.0)), -1),
                (tv("user_id:u1", AggValue::Num(4.0)), 1),
                (tv("user_id:u2", AggValue::Str("n/a".into())), -1),
            ]),
        )
        .unwrap();
    computed.commit(&[1_767_225_660_001]).unwrap();
    assert_eq!(
        read("SELECT profile || '=' || value::text FROM S.computed_traits ORDER BY 1"),
        ["user_id:u1=4.0"]
    );
}

#[test]
fn retractions_delete_rows_and_replacements_leave_no_old_columns() {
    let url = url_or_skip!();
    let s = TestSchema::new(&url, "retract");
    let mut sink: WarehouseSink<Event> = s.open("events");
    let a = ev(
        r#"{"type":"track","event":"Clicked","userId":"u","messageId":"m1","timestamp":"2026-01-01T00:00:00Z","properties":{"x":1,"y":2}}"#,
    );
    let a2 = ev(
        r#"{"type":"track","event":"Clicked","userId":"u","messageId":"m1","timestamp":"2026-01-01T00:00:00Z","properties":{"x":5}}"#,
    );
    let b =
        ev(r#"{"type":"page","userId":"u","messageId":"m2","timestamp":"2026-01-01T00:00:00Z"}"#);
    sink.write(1, &consolidate(vec![(a.clone(), 1), (b.clone(), 1)]))
        .unwrap();
    sink.commit(&[2]).unwrap();
    assert_eq!(
        (
            count(&url, &s.name, "clicked"),
            count(&url, &s.name, "tracks"),
            count(&url, &s.name, "pages")
        ),
        (1, 1, 1)
    );
    // Same messageId, new content, at one time: the row is replaced.
    sink.write(2, &consolidate(vec![(a.clone(), -1), (a2.clone(), 1)]))
        .unwrap();
    // Inserted and retracted between two commits: nothing is left.
    let c = ev(
        r#"{"type":"track","event":"Clicked","userId":"u","messageId":"m3","timestamp":"2026-01-01T00:00:00Z"}"#,
    );
    sink.write(3, &[(c.clone(), 1)]).unwrap();
    sink.write(4, &[(c, -1), (b, -1)]).unwrap();
    sink.commit(&[5]).unwrap();
    let r = row(&url, &s.name, "clicked", "m1").unwrap();
    assert_eq!((&r["x"], &r["y"]), (&5.into(), &serde_json::Value::Null));
    assert_eq!(
        (
            count(&url, &s.name, "clicked"),
            count(&url, &s.name, "tracks"),
            count(&url, &s.name, "pages")
        ),
        (1, 1, 0)
    );
    sink.write(5, &[(a2, -1)]).unwrap();
    sink.commit(&[6]).unwrap();
    assert_eq!(
        (
            count(&url, &s.name, "clicked"),
            count(&url, &s.name, "tracks")
        ),
        (0, 0)
    );
}

#[test]
fn bad_text_is_stored_and_names_are_sanitized() {
    let url = url_or_skip!();
    let s = TestSchema::new(&url, "odd");
    let mut sink: WarehouseSink<Event> = s.open("events");
    let long_key = "k".repeat(80);
    let e = ev(&format!(
        r#"{{"type":"track","event":"Users","userId":"u\u0000x","messageId":"m\u00001","timestamp":"2026-01-01T00:00:00Z","properties":{{"nul":"a\u0000b","{long_key}":1,"Mixed Case-Key":2,"context_ip":"p"}}}}"#
    ));
    sink.write(1, &[(e.clone(), 1)]).unwrap();
    sink.commit(&[2]).unwrap();
    // A track event named like a Weft table gets a leading underscore.
    let cols = columns(&url, &s.name, "_users");
    assert!(
        cols.contains_key(&"k".repeat(63))
            && cols.contains_key("mixed_case_key")
            && cols.contains_key("_context_ip"),
        "{cols:?}"
    );
    let r = row(&url, &s.name, "_users", "m\u{FFFD}1").unwrap();
    assert_eq!(
        (&r["nul"], &r["user_id"]),
        (&"a\u{FFFD}b".into(), &"u\u{FFFD}x".into())
    );
    // Deleting by the same (sanitized) key works.
    sink.write(2, &[(e, -1)]).unwrap();
    sink.commit(&[3]).unwrap();
    assert_eq!(count(&url, &s.name, "_users"), 0);
}

// ---------------------------------------------------------------------------
// Exactly once.

/// A deterministic stream of changes to all four record types, with
/// retractions, replacements, new properties and type changes over time,
/// and the live state a correct sink must leave.
struct Stream {
    events: Vec<Vec<(Event, isize)>>,
    traits: Vec<Vec<(TraitRecord, isize)>>,
    members: Vec<Vec<(Membership, isize)>>,
    computed: Vec<Vec<(TraitValue, isize)>>,
    live_events: BTreeMap<String, Event>,
    live_traits: BTreeMap<(String, String), String>,
    live_members: BTreeSet<(String, String)>,
    live_computed: BTreeMap<(String, String), AggValue>,
}

/// Times of the stream: 1000, 1010, ...
fn time_of(i: usize) -> u64 {
    1000 + 10 * i as u64
}

fn stream(times: usize, seed: u64) -> Stream {
    let mut rng = seed | 1;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut s = Stream {
        events: Vec::new(),
        traits: Vec::new(),
        members: Vec::new(),
        computed: Vec::new(),
        live_events: BTreeMap::new(),
        live_traits: BTreeMap::new(),
        live_members: BTreeSet::new(),
        live_computed: BTreeMap::new(),
    };
    let names = ["Order Completed", "Product Viewed", "Signed Up"];
    let mut id = 0;
    for t in 0..times {
        // Events: new ones of every type, some retracted, some replaced.
        let mut ev_changes = Vec::new();
        for _ in 0..6 {
            id += 1;
            let kind = next(6);
            // Properties evolve: a new key every few times, `amount` turns
            // fractional then textual, `flag` boolean then string.
            let amount = if t < times / 3 {
                format!("{}", next(100))
            } else if t < 2 * times / 3 {
                format!("{}.5", next(100))
            } else {
                format!("\"a{}\"", next(100))
            };
            let flag = if t % 7 == 6 {
                "\"yes\"".to_string()
            } else {
                (next(2) == 0).to_string()
            };
            let props = format!(
                r#"{{"amount":{amount},"flag":{flag},"item":{{"sku":"s{}","price":{}}},"p{}":{}}}"#,
                next(50),
                next(1000),
                t / 4,
                t
            );
            let body = match kind {
                0 | 1 => format!(
                    r#""type":"track","event":"{}","properties":{props}"#,
                    names[next(3) as usize]
                ),
                2 => format!(r#""type":"identify","traits":{props}"#),
                3 => format!(
                    r#""type":"page","name":"P{}","properties":{props}"#,
                    next(5)
                ),
                4 => format!(
                    r#""type":"screen","name":"S{}","properties":{props}"#,
                    next(5)
                ),
                _ => format!(
                    r#""type":"group","groupId":"g{}","traits":{props}"#,
                    next(3)
                ),
            };
            let e = ev(&format!(
                r#"{{{body},"userId":"u{}","messageId":"m{id}","timestamp":"2026-01-01T00:00:{:02}Z","context":{{"ip":"10.0.0.{}","library":{{"name":"lib{}"}}}}}}"#,
                next(10),
                next(60),
                next(255),
                next(3)
            ));
            ev_changes.push((e.clone(), 1));
            s.live_events.insert(format!("m{id}"), e);
        }
        for _ in 0..2 {
            if s.live_events.len() > 10 {
                let victim = s
                    .live_events
                    .keys()
                    .nth(next(s.live_events.len() as u64) as usize)
                    .unwrap()
                    .clone();
                if ev_changes.iter().any(|(e, _)| e.message_id() == victim) {
                    continue; // changed at this very time already
                }
                let old = s.live_events.remove(&victim).unwrap();
                ev_changes.push((old.clone(), -1));
                if next(2) == 0 {
                    // A new version with the same messageId (other properties).
                    let mut json = Vec::new();
                    old.write_json(&mut json);
                    let mut v: serde_json::Value = serde_json::from_slice(&json).unwrap();
                    v["properties"] = serde_json::json!({"replaced": t, "amount": 1});
                    let new = ev(&v.to_string());
                    ev_changes.push((new.clone(), 1));
                    s.live_events.insert(victim, new);
                }
            }
        }
        s.events.push(consolidate(ev_changes));

        // Traits: set, change and remove per profile.
        let mut tr = Vec::new();
        for _ in 0..4 {
            let (p, k) = (
                format!("u{}", next(8)),
                ["plan", "score", "address", "vip"][next(4) as usize].to_string(),
            );
            if let Some(old) = s.live_traits.remove(&(p.clone(), k.clone())) {
                tr.push((trait_rec(&p, &k, &old), -1));
            }
            if next(4) != 0 {
                let v = match k.as_str() {
                    "plan" => format!("\"plan{}\"", next(3)),
                    "score" => format!("{}", next(100)),
                    "address" => {
                        if next(2) == 0 {
                            r#"{"city":"Paris","zip":"75001"}"#.to_string()
                        } else {
                            format!(r#"{{"city":"C{}"}}"#, next(9))
                        }
                    }
                    _ => (next(2) == 0).to_string(),
                };
                tr.push((trait_rec(&p, &k, &v), 1));
                s.live_traits.insert((p, k), v);
            }
        }
        s.traits.push(consolidate(tr));

        // Memberships toggle; computed traits change value.
        let mut ms = Vec::new();
        let mut cs = Vec::new();
        for _ in 0..3 {
            let key = (
                ["vip", "churn"][next(2) as usize].to_string(),
                format!("user_id:u{}", next(8)),
            );
            let m = Membership {
                audience: key.0.clone(),
                profile: key.1.clone(),
            };
            if s.live_members.remove(&key) {
                ms.push((m, -1));
            } else {
                s.live_members.insert(key);
                ms.push((m, 1));
            }
            let ckey = (format!("user_id:u{}", next(8)), "orders".to_string());
            if let Some(old) = s.live_computed.remove(&ckey) {
                cs.push((
                    TraitValue {
                        name: ckey.1.clone(),
                        profile: ckey.0.clone(),
                        value: old,
                    },
                    -1,
                ));
            }
            let v = AggValue::Num(next(20) as f64);
            cs.push((
                TraitValue {
                    name: ckey.1.clone(),
                    profile: ckey.0.clone(),
                    value: v.clone(),
                },
                1,
            ));
            s.live_computed.insert(ckey, v);
        }
        s.members.push(consolidate(ms));
        s.computed.push(consolidate(cs));
    }
    s
}

/// The four sinks of one run.
struct Sinks {
    events: WarehouseSink<Event>,
    traits: WarehouseSink<TraitRecord>,
    members: WarehouseSink<Membership>,
    computed: WarehouseSink<TraitValue>,
}

impl Sinks {
    fn open(s: &TestSchema, buffer: usize) -> Sinks {
        let open = |name: &str| {
            let mut c = s.config(name);
            c.max_buffered_bytes = buffer;
            c
        };
        Sinks {
            events: WarehouseSink::open(&open("events")).unwrap(),
            traits: WarehouseSink::open(&open("traits")).unwrap(),
            members: WarehouseSink::open(&open("members")).unwrap(),
            computed: WarehouseSink::open(&open("computed")).unwrap(),
        }
    }

    fn write(&mut self, st: &Stream, i: usize) -> std::io::Result<()> {
        let t = time_of(i);
        self.events.write(t, &st.events[i])?;
        self.traits.write(t, &st.traits[i])?;
        self.members.write(t, &st.members[i])?;
        self.computed.write(t, &st.computed[i])
    }

    fn commit(&mut self, frontier: &[u64]) -> std::io::Result<()> {
        self.events.commit(frontier)?;
        self.traits.commit(frontier)?;
        self.members.commit(frontier)?;
        self.computed.commit(frontier)
    }

    /// Writes times `from..to`, committing after every `every` times and at the end.
    fn run(&mut self, st: &Stream, from: usize, to: usize, every: usize) -> std::io::Result<()> {
        for i in from..to {
            self.write(st, i)?;
            if (i + 1) % every == 0 {
                self.commit(&[time_of(i) + 1])?;
            }
        }
        let frontier: Vec<u64> = if to == st.events.len() {
            vec![]
        } else {
            vec![time_of(to - 1) + 1]
        };
        self.commit(&frontier)
    }
}

/// Checks the tables against the stream's live state (not only against another run).
fn check_live(url: &str, schema: &str, st: &Stream) {
    let mut c = connect(url);
    let ids = |c: &mut Client, sql: &str| -> BTreeSet<String> {
        c.query(sql.replace("S.", &format!("\"{schema}\".")).as_str(), &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    let live = |kinds: &[&str]| -> BTreeSet<String> {
        st.live_events
            .iter()
            .filter(|(_, e)| kinds.contains(&e.kind.as_str()))
            .map(|(id, _)| id.clone())
            .collect()
    };
    assert_eq!(ids(&mut c, "SELECT id FROM S.tracks"), live(&["track"]));
    let own: BTreeSet<String> = ["order_completed", "product_viewed", "signed_up"]
        .iter()
        .flat_map(|t| ids(&mut c, &format!("SELECT id FROM S.{t}")))
        .collect();
    assert_eq!(own, live(&["track"]));
    assert_eq!(
        ids(&mut c, "SELECT id FROM S.identifies"),
        live(&["identify"])
    );
    assert_eq!(ids(&mut c, "SELECT id FROM S.pages"), live(&["page"]));
    assert_eq!(ids(&mut c, "SELECT id FROM S.screens"), live(&["screen"]));
    assert_eq!(ids(&mut c, "SELECT id FROM S.groups"), live(&["group"]));
    let profiles: BTreeSet<String> = st
        .live_traits
        .keys()
        .map(|(p, _)| format!("user_id:{p}"))
        .collect();
    assert_eq!(ids(&mut c, "SELECT id FROM S.users"), profiles);
    let plans: BTreeSet<String> = st
        .live_traits
        .iter()
        .filter(|((_, k), _)| k == "plan")
        .map(|((p, _), v)| format!("user_id:{p}={}", v.trim_matches('"')))
        .collect();
    assert_eq!(
        ids(
            &mut c,
            "SELECT id || '=' || plan FROM S.users WHERE plan IS NOT NULL"
        ),
        plans
    );
    let members: BTreeSet<String> = st
        .live_members
        .iter()
        .map(|(a, p)| format!("{a}/{p}"))
        .collect();
    assert_eq!(
        ids(
            &mut c,
            "SELECT audience || '/' || profile FROM S.audience_memberships"
        ),
        members
    );
    let computed: BTreeSet<String> = st
        .live_computed
        .iter()
        .map(|((p, _), v)| match v {
            AggValue::Num(n) => format!("{p}={n:.1}"),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(
        ids(
            &mut c,
            "SELECT profile || '=' || value::text FROM S.computed_traits"
        ),
        computed
    );
}

/// Kills the sinks' connections of this schema from the outside.
fn kill_connections(url: &str, schema: &str) -> u64 {
    let mut c = connect(url);
    c.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE $1",
        &[&format!("weft-sink-%-{schema}")],
    )
    .unwrap()
    .len() as u64
}

#[test]
fn a_restart_mid_stream_leaves_no_duplicate_and_no_missing_row() {
    let url = url_or_skip!();
    const TIMES: usize = 40;
    let st = stream(TIMES, 0x5eed);

    // The uninterrupted run, committing every 3 times.
    let reference = TestSchema::new(&url, "ref");
    Sinks::open(&reference, usize::MAX)
        .run(&st, 0, TIMES, 3)
        .unwrap();
    check_live(&url, &reference.name, &st);
    let expected = dump(&url, &reference.name);
    assert!(expected.len() >= 10, "{:?}", expected.keys());
    assert!(
        columns(&url, &reference.name, "order_completed")["amount"] == "text",
        "the stream widens a column"
    );

    // Scenario A: crash with uncommitted writes, then crash right after a
    // commit; every restart replays the stream from the start.
    let a = TestSchema::new(&url, "crash");
    {
        let mut s = Sinks::open(&a, usize::MAX);
        s.run(&st, 0, 10, 3).unwrap();
        for i in 10..17 {
            s.write(&st, i).unwrap();
        }
        // Dropped without commit: a crash.
    }
    {
        let mut s = Sinks::open(&a, usize::MAX);
        assert_eq!(s.events.committed_frontier(), vec![time_of(9) + 1]);
        s.run(&st, 0, 25, 4).unwrap();
        assert!(s.events.stats().skipped > 0);
        // Dropped right after its commit.
    }
    {
        let mut s = Sinks::open(&a, usize::MAX);
        s.run(&st, 0, TIMES, 5).unwrap();
        assert_eq!(s.events.committed_frontier(), Vec::<u64>::new());
    }
    assert_same(
        &dump(&url, &a.name),
        &expected,
        "crash before and after commits",
    );

    // Scenario B: staged changes applied early (tiny buffer), inside
    // transactions that a crash and a killed connection roll back.
    let b = TestSchema::new(&url, "early");
    {
        let mut s = Sinks::open(&b, 1);
        s.run(&st, 0, 8, 8).unwrap();
        for i in 8..14 {
            s.write(&st, i).unwrap();
        }
        assert!(s.events.stats().rows > 0);
    }
    {
        let mut s = Sinks::open(&b, 1);
        s.run(&st, 0, 20, 2).unwrap();
        for i in 20..24 {
            s.write(&st, i).unwrap();
        }
        assert!(kill_connections(&url, &b.name) >= 4);
        let err = s
            .write(&st, 24)
            .and_then(|_| s.commit(&[time_of(24) + 1]))
            .unwrap_err();
        assert!(err.to_string().contains("restart the job"), "{err}");
        // A failed sink refuses further calls.
        assert!(s.commit(&[time_of(30)]).is_err());
    }
    {
        let mut s = Sinks::open(&b, 1);
        s.run(&st, 0, TIMES, 7).unwrap();
    }
    assert_same(
        &dump(&url, &b.name),
        &expected,
        "early flushes, crash and killed connection",
    );

    // A completed output skips everything on reopen.
    let mut s = Sinks::open(&b, usize::MAX);
    s.run(&st, 0, TIMES, 1).unwrap();
    assert_eq!(s.events.stats().staged, 0);
    drop(s);
    assert_same(&dump(&url, &b.name), &expected, "after a completed output");
}

#[test]
fn a_second_writer_with_the_same_sink_name_is_refused() {
    let url = url_or_skip!();
    let s = TestSchema::new(&url, "zombie");
    let e = |i: usize| {
        ev(&format!(
            r#"{{"type":"page","userId":"u","messageId":"m{i}","timestamp":"2026-01-01T00:00:00Z"}}"#
        ))
    };
    let mut old: WarehouseSink<Event> = s.open("events");
    let mut new: WarehouseSink<Event> = s.open("events");
    new.write(1, &[(e(1), 1)]).unwrap();
    new.commit(&[2]).unwrap();
    // The older sink did not see that commit: it must not write.
    old.write(1, &[(e(1), 1), (e(2), 1)]).unwrap();
    let err = old.commit(&[2]).unwrap_err();
    assert!(err.to_string().contains("another writer"), "{err}");
    assert_eq!(count(&url, &s.name, "pages"), 1);
    new.write(2, &[(e(3), 1)]).unwrap();
    new.commit(&[3]).unwrap();
    assert_eq!(count(&url, &s.name, "pages"), 2);
}

#[test]
fn an_unreachable_server_is_a_clear_error() {
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = WarehouseConfig::new("s", format!("postgres://u:p@127.0.0.1:{port}/db"), "weft");
    let err = WarehouseSink::<Event>::open(&config)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot connect"), "{err}");
    assert!(!err.contains("u:p"), "{err}");
}
