//! The Parquet lake sink, read back by independent readers (pyarrow and
//! DuckDB's Python package, installed by `scripts/python-deps.sh`): rows,
//! partitions and the manifest; exactly-once files across a crash; deletions
//! that leave no trace of an erased person.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::{json, Value};
use weft_connectors::lake::manifest::MANIFEST;
use weft_connectors::lake::{LakeConfig, ParquetLakeSink};
use weft_connectors::sink::Sink;
use weft_dataflows::audience::Membership;
use weft_dataflows::event::{format_iso8601, parse_event, Event, ParseContext};

/// 2026-01-01T00:00:00Z.
const DAY0: i64 = 1_767_225_600_000;
const HOUR: i64 = 3_600_000;

// ---------------------------------------------------------------------------
// Independent readers.

fn python_path() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/python-deps.sh");
        let out = Command::new("bash").arg(&script).output().unwrap();
        assert!(
            out.status.success(),
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("PYTHONPATH="))
            .expect("python-deps.sh prints PYTHONPATH=...")
            .to_string()
    })
}

/// Runs a Python script with pyarrow and duckdb importable; returns its JSON output.
fn python(script: &str, args: &[&str]) -> Value {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .env("PYTHONPATH", python_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "python printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Reads every file the manifest lists with pyarrow; checks each row
/// against its file's partition (type, and day/hour of the time column,
/// computed with Python's datetime) and each file against its manifest
/// entry (rows, bytes, snappy).
const PYARROW_READER: &str = r#"
import datetime, json, os, sys
import pyarrow as pa, pyarrow.parquet as pq
root, time_col, type_col, type_name = sys.argv[1:5]
mpath = os.path.join(root, '_weft_manifest.json')
manifest = json.load(open(mpath)) if os.path.exists(mpath) else None
disk = sorted(os.path.relpath(os.path.join(d, f), root).replace(os.sep, '/')
              for d, _, fs in os.walk(root) for f in fs)
rows, problems, schema = [], [], {}
for entry in (manifest['files'] if manifest else []):
    path = os.path.join(root, entry['path'])
    pf = pq.ParquetFile(path)
    md = pf.metadata
    if md.num_rows != entry['rows']:
        problems.append('%s: %d rows, manifest says %d' % (entry['path'], md.num_rows, entry['rows']))
    if os.path.getsize(path) != entry['bytes']:
        problems.append('%s: size differs from manifest' % entry['path'])
    for g in range(md.num_row_groups):
        for c in range(md.num_columns):
            if md.row_group(g).column(c).compression != 'SNAPPY':
                problems.append('%s: not snappy' % entry['path'])
    table = pf.read()
    schema = {f.name: str(f.type) for f in table.schema}
    for i, f in enumerate(table.schema):
        if pa.types.is_timestamp(f.type):
            table = table.set_column(i, f.name, table.column(i).cast(pa.int64()))
    parts = dict(p.split('=', 1) for p in entry['path'].split('/')[:-1])
    for r in table.to_pylist():
        t = datetime.datetime.fromtimestamp(r[time_col] / 1000, tz=datetime.timezone.utc)
        expected_type = r[type_col] if type_col else type_name
        if parts != {'type': expected_type, 'day': t.strftime('%Y-%m-%d'), 'hour': t.strftime('%H')}:
            problems.append('%s holds a row of %s at %s' % (entry['path'], expected_type, t))
        if not (entry['min_time_ms'] <= r[time_col] <= entry['max_time_ms']):
            problems.append('%s: row time outside the manifest range' % entry['path'])
        r['_file'] = entry['path']
        rows.append(r)
print(json.dumps({'manifest': manifest, 'disk': disk, 'rows': rows,
                  'problems': problems, 'schema': schema}))
"#;

/// Runs a DuckDB query over every `*.parquet` under a root (hive partitions
/// as text); prints the rows as lists.
const DUCKDB_QUERY: &str = r#"
import json, sys
import duckdb
root, query = sys.argv[1:3]
con = duckdb.connect()
con.execute("CREATE VIEW lake AS SELECT * FROM read_parquet('%s/**/*.parquet', hive_partitioning=true, hive_types_autocast=false)" % root)
print(json.dumps([list(r) for r in con.execute(query).fetchall()], default=str))
"#;

struct Lake {
    manifest: Value,
    disk: Vec<String>,
    rows: Vec<Value>,
    schema: Value,
}

fn read_lake(root: &Path, time_col: &str, type_col: &str, type_name: &str) -> Lake {
    let out = python(
        PYARROW_READER,
        &[root.to_str().unwrap(), time_col, type_col, type_name],
    );
    assert_eq!(out["problems"], json!([]), "problems in the lake");
    Lake {
        manifest: out["manifest"].clone(),
        disk: serde_json::from_value(out["disk"].clone()).unwrap(),
        rows: serde_json::from_value(out["rows"].clone()).unwrap(),
        schema: out["schema"].clone(),
    }
}

fn read_events(root: &Path) -> Lake {
    read_lake(root, "timestamp", "type", "")
}

fn duckdb(root: &Path, query: &str) -> Value {
    python(DUCKDB_QUERY, &[root.to_str().unwrap(), query])
}

impl Lake {
    /// Files on disk are exactly the manifest's files and the manifest: no
    /// temporary file, no orphan.
    fn assert_disk_is_manifest(&self) {
        let mut listed: Vec<String> = self.manifest["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["path"].as_str().unwrap().to_string())
            .collect();
        listed.push(MANIFEST.to_string());
        listed.sort();
        assert_eq!(self.disk, listed, "files on disk vs the manifest");
    }

    /// Every `*.parquet` on disk is in the manifest (unpublished files,
    /// `.part-*.parquet.tmp`, may exist while the sink runs).
    fn assert_globbed_parquet_is_listed(&self) {
        let listed: Vec<&str> = self.manifest["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["path"].as_str().unwrap())
            .collect();
        let globbed: Vec<&str> = self
            .disk
            .iter()
            .map(String::as_str)
            .filter(|f| f.ends_with(".parquet"))
            .collect();
        assert_eq!(globbed, listed, "*.parquet on disk vs the manifest");
    }

    /// `(message_id, weft_time, weft_diff)` of every event row, sorted.
    fn event_keys(&self) -> Vec<(String, i64, i64)> {
        let mut keys: Vec<_> = self
            .rows
            .iter()
            .map(|r| {
                (
                    r["message_id"].as_str().unwrap().to_string(),
                    r["weft_time"].as_i64().unwrap(),
                    r["weft_diff"].as_i64().unwrap(),
                )
            })
            .collect();
        keys.sort();
        keys
    }
}

// ---------------------------------------------------------------------------
// Data.

const KINDS: [&str; 6] = ["track", "identify", "page", "screen", "group", "alias"];

/// Event `id` of `user`, of call type `kind`, at `ts`.
fn event(id: &str, user: &str, kind: &str, ts: i64) -> Event {
    let mut v = json!({
        "type": kind,
        "messageId": id,
        "userId": user,
        "anonymousId": format!("anon-{user}"),
        "timestamp": format_iso8601(ts),
        "receivedAt": format_iso8601(ts + 1500),
        "properties": {"n": id, "price": 9.5},
        "context": {"traits": {"email": format!("{user}@example.com")}, "device": {"id": format!("dev-{user}")}},
    });
    match kind {
        "track" => v["event"] = json!("Product Viewed"),
        "page" | "screen" => v["name"] = json!("Home"),
        "group" => v["groupId"] = json!("acme"),
        "alias" => v["previousId"] = json!(format!("anon-{user}")),
        _ => {}
    }
    parse_event(v.to_string().as_bytes(), &ParseContext::default()).unwrap()
}

/// The events of logical time `t` in the stream: `n` events of four users,
/// every call type, timestamps spread over two days' boundary.
fn events_at(t: u64, n: usize) -> Vec<(Event, isize)> {
    let users = ["bob", "carol", "dave", "erin"];
    let mut out: Vec<(Event, isize)> = (0..n)
        .map(|i| {
            let k = t as usize * 1000 + i;
            let ts = DAY0 + 22 * HOUR + (k as i64 * 7 * 60_000) % (4 * HOUR);
            (event(&format!("m{k}"), users[k % 4], KINDS[k % 6], ts), 1)
        })
        .collect();
    out.sort();
    out
}

fn sink<D: weft_connectors::lake::LakeRecord>(
    name: &str,
    root: &Path,
    target_bytes: u64,
) -> ParquetLakeSink<D> {
    let mut config = LakeConfig::new(name, root);
    config.target_file_bytes = target_bytes;
    config.max_row_group_rows = 16;
    ParquetLakeSink::open(config).unwrap()
}

fn keys_of(updates: &[(Event, isize)], t: u64) -> Vec<(String, i64, i64)> {
    updates
        .iter()
        .map(|(e, d)| (e.message_id().to_string(), t as i64, *d as i64))
        .collect()
}

// ---------------------------------------------------------------------------
// Tests.

#[test]
fn events_and_memberships_read_back_by_pyarrow_and_duckdb() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("events");
    let mut lake = sink::<Event>("events", &root, 128 << 20);
    let mut expected = Vec::new();
    for t in 1..=6u64 {
        let updates = events_at(t, 25);
        lake.write(t, &updates).unwrap();
        expected.extend(keys_of(&updates, t));
        if t == 3 {
            // Written but not committed: invisible, even to a reader that globs.
            let read = read_events(&root);
            read.assert_globbed_parquet_is_listed();
            assert!(read.disk.iter().any(|f| f.ends_with(".tmp")));
            assert_eq!(read.rows.len(), 2 * 25);
        }
        if t % 2 == 0 {
            lake.commit(&[t + 1]).unwrap();
            let read = read_events(&root);
            read.assert_disk_is_manifest();
            assert_eq!(read.manifest["frontier"], json!([t + 1]));
            assert_eq!(read.rows.len(), t as usize * 25);
        }
    }
    lake.commit(&[]).unwrap();
    let read = read_events(&root);
    read.assert_disk_is_manifest();
    assert_eq!(read.manifest["frontier"], json!([]));
    assert_eq!(read.manifest["sink"], json!("events"));
    expected.sort();
    assert_eq!(read.event_keys(), expected);
    // Each commit published one file per partition written since the last one.
    let partitions: std::collections::BTreeSet<&str> = read
        .rows
        .iter()
        .map(|r| r["_file"].as_str().unwrap().rsplit_once('/').unwrap().0)
        .collect();
    assert!(partitions.len() >= 6 * 2, "{partitions:?}");
    assert!(partitions.contains("type=alias/day=2026-01-01/hour=23"));
    assert!(partitions.contains("type=track/day=2026-01-02/hour=01"));

    // Columns and values.
    assert_eq!(read.schema["timestamp"], json!("timestamp[ms, tz=UTC]"));
    assert_eq!(read.schema["received_at"], json!("timestamp[ms, tz=UTC]"));
    assert_eq!(read.schema["weft_time"], json!("int64"));
    let row = read
        .rows
        .iter()
        .find(|r| r["message_id"] == json!("m1003"))
        .unwrap();
    let original = &events_at(1, 25)
        .into_iter()
        .find(|(e, _)| e.message_id() == "m1003")
        .unwrap()
        .0;
    assert_eq!(row["type"], json!(original.kind.as_str()));
    assert_eq!(row["user_id"], json!("erin"));
    assert_eq!(row["email"], json!("erin@example.com"));
    assert_eq!(row["device_id"], json!("dev-erin"));
    assert_eq!(row["timestamp"], json!(original.time_ms));
    assert_eq!(row["received_at"], json!(original.time_ms + 1500));
    let props: Value = serde_json::from_str(row["properties"].as_str().unwrap()).unwrap();
    assert_eq!(props, json!({"n": "m1003", "price": 9.5}));
    let context: Value = serde_json::from_str(row["context"].as_str().unwrap()).unwrap();
    assert_eq!(context["device"]["id"], json!("dev-erin"));

    // DuckDB over the hive layout agrees on counts per type.
    let counts = duckdb(
        &root,
        "SELECT type, count(*) FROM lake GROUP BY type ORDER BY type",
    );
    let mut per_type: BTreeMap<String, i64> = BTreeMap::new();
    for (e, _) in (1..=6).flat_map(|t| events_at(t, 25)) {
        *per_type.entry(e.kind.as_str().to_string()).or_default() += 1;
    }
    let per_type: Vec<Value> = per_type.into_iter().map(|(k, n)| json!([k, n])).collect();
    assert_eq!(counts, json!(per_type));

    // Memberships: a change log partitioned by logical time, across midnight.
    let root = dir.path().join("audiences");
    let mut lake = sink::<Membership>("audiences", &root, 128 << 20);
    let m = |a: &str, p: &str| Membership {
        audience: a.into(),
        profile: p.into(),
    };
    let t0 = (DAY0 + 24 * HOUR - 1000) as u64; // 2026-01-01T23:59:59Z
    let steps: Vec<(u64, Vec<(Membership, isize)>)> = vec![
        (
            t0,
            vec![(m("vip", "user_id:u1"), 1), (m("vip", "user_id:u2"), 1)],
        ),
        (
            t0 + 500,
            vec![(m("churn", "user_id:u1"), 1), (m("vip", "user_id:u1"), -1)],
        ),
        (t0 + 1000, vec![(m("vip", "email:u3@example.com"), 1)]),
        (t0 + 1500, vec![(m("vip", "user_id:u2"), -1)]),
    ];
    for (i, (t, updates)) in steps.iter().enumerate() {
        lake.write(*t, updates).unwrap();
        if i == 1 {
            lake.commit(&[t + 1]).unwrap();
        }
    }
    lake.commit(&[]).unwrap();
    let read = read_lake(&root, "weft_time", "", "audiences");
    read.assert_disk_is_manifest();
    let rows = duckdb(
        &root,
        "SELECT audience, profile, weft_time, weft_diff, type, day, hour FROM lake ORDER BY weft_time, audience, profile",
    );
    let t0 = t0 as i64;
    assert_eq!(
        rows,
        json!([
            ["vip", "user_id:u1", t0, 1, "audiences", "2026-01-01", "23"],
            ["vip", "user_id:u2", t0, 1, "audiences", "2026-01-01", "23"],
            [
                "churn",
                "user_id:u1",
                t0 + 500,
                1,
                "audiences",
                "2026-01-01",
                "23"
            ],
            [
                "vip",
                "user_id:u1",
                t0 + 500,
                -1,
                "audiences",
                "2026-01-01",
                "23"
            ],
            [
                "vip",
                "email:u3@example.com",
                t0 + 1000,
                1,
                "audiences",
                "2026-01-02",
                "00"
            ],
            [
                "vip",
                "user_id:u2",
                t0 + 1500,
                -1,
                "audiences",
                "2026-01-02",
                "00"
            ],
        ])
    );
}

#[test]
fn a_restart_mid_stream_leaves_no_duplicate_no_missing_row_and_no_orphan() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lake");
    // The stream: 40 events per time; at time 6, two events of time 2 are retracted.
    let stream = |t: u64| -> Vec<(Event, isize)> {
        let mut updates = events_at(t, 40);
        if t == 6 {
            let old = events_at(2, 40);
            updates.extend(old.into_iter().take(2).map(|(e, _)| (e, -1)));
            updates.sort();
        }
        updates
    };
    // Small files, so partitions roll over into several files.
    let target = 6 * 1024;

    // Run 1: commits up to time 4, writes 5..=7, then crashes (dropped uncommitted).
    let mut lake = sink::<Event>("events", &root, target);
    for t in 1..=4 {
        lake.write(t, &stream(t)).unwrap();
    }
    lake.commit(&[5]).unwrap();
    for t in 5..=7 {
        lake.write(t, &stream(t)).unwrap();
    }
    drop(lake);
    let crashed = read_events(&root);
    assert_eq!(crashed.rows.len(), 4 * 40);
    let temps = crashed.disk.iter().filter(|f| f.ends_with(".tmp")).count();
    assert!(temps > 0, "the crashed run left unpublished files");
    // A crash between the manifest and the renames: a listed file still at
    // its temporary name; and a part that no manifest lists.
    let listed = crashed.manifest["files"][0]["path"].as_str().unwrap();
    let (d, name) = listed.rsplit_once('/').unwrap();
    std::fs::rename(root.join(listed), root.join(format!("{d}/.{name}.tmp"))).unwrap();
    std::fs::write(
        root.join(format!("{d}/part-999999999999.parquet")),
        b"not ours to keep",
    )
    .unwrap();

    // Run 2: the restarted job replays from the start.
    let mut lake = sink::<Event>("events", &root, target);
    assert_eq!(lake.committed_frontier(), vec![5]);
    assert!(lake.stats().orphans_removed > temps as u64);
    for t in 1..=10 {
        lake.write(t, &stream(t)).unwrap();
        if t == 7 {
            lake.commit(&[8]).unwrap();
        }
    }
    lake.commit(&[]).unwrap();

    let read = read_events(&root);
    read.assert_disk_is_manifest();
    let mut expected: Vec<(String, i64, i64)> = (1..=10)
        .flat_map(|t| keys_of(&events_at(t, 40), t))
        .collect();
    let retracted: Vec<String> = events_at(2, 40)
        .into_iter()
        .take(2)
        .map(|(e, _)| e.message_id().to_string())
        .collect();
    expected.retain(|(id, _, _)| !retracted.contains(id));
    expected.sort();
    assert_eq!(read.event_keys(), expected);
    let files = read.manifest["files"].as_array().unwrap().len();
    let partitions = read.manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().rsplit_once('/').unwrap().0)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    assert!(files > partitions, "files roll over at the target size");
}

#[test]
fn deletion_removes_retracted_events_and_every_trace_of_an_erased_person() {
    let dir = tempfile::tempdir().unwrap();
    let events_root = dir.path().join("events");
    let audiences_root = dir.path().join("audiences");
    let mut events = sink::<Event>("events", &events_root, 128 << 20);
    let mut audiences = sink::<Membership>("audiences", &audiences_root, 128 << 20);
    let m = |a: &str, p: &str| Membership {
        audience: a.into(),
        profile: p.into(),
    };

    // Alice is active only around 10:00; the others all day.
    let mut all: Vec<(u64, Event)> = Vec::new();
    for t in 1..=4u64 {
        let mut updates: Vec<(Event, isize)> = Vec::new();
        for i in 0..30usize {
            let user = ["bob", "carol", "dave"][i % 3];
            let ts = DAY0 + (8 + (i as i64 % 8)) * HOUR + t as i64 * 60_000;
            updates.push((event(&format!("e{t}-{i}"), user, KINDS[i % 6], ts), 1));
        }
        for i in 0..3usize {
            let ts = DAY0 + 10 * HOUR + t as i64 * 60_000 + i as i64;
            updates.push((
                event(
                    &format!("a{t}-{i}"),
                    "alice",
                    KINDS[(t as usize + i) % 6],
                    ts,
                ),
                1,
            ));
        }
        if t == 2 {
            // Bob's alias of Alice's anonymous id names her too.
            let mut v = json!({"type": "alias", "messageId": "bob-alias", "userId": "bob",
                "previousId": "anon-alice", "timestamp": format_iso8601(DAY0 + 12 * HOUR)});
            v["properties"] = json!({});
            let e = parse_event(v.to_string().as_bytes(), &ParseContext::default()).unwrap();
            updates.push((e, 1));
        }
        updates.sort();
        all.extend(updates.iter().map(|(e, _)| (t, e.clone())));
        events.write(t, &updates).unwrap();
        events.commit(&[t + 1]).unwrap();
        let changes = match t {
            1 => vec![(m("vip", "user_id:alice"), 1), (m("vip", "user_id:bob"), 1)],
            2 => vec![
                (m("churn", "user_id:alice"), 1),
                (m("vip", "anonymous_id:anon-alice"), 1),
            ],
            3 => vec![(m("churn", "user_id:carol"), 1)],
            _ => vec![],
        };
        audiences.write(t, &changes).unwrap();
        audiences.commit(&[t + 1]).unwrap();
    }
    let before = read_events(&events_root);
    let files_before = before.manifest["files"].as_array().unwrap().len();
    let alice_files = before
        .rows
        .iter()
        .filter(|r| r.to_string().contains("alice"))
        .map(|r| r["_file"].as_str().unwrap())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    assert!(alice_files > 0 && alice_files < files_before);

    // Time 5: a privacy DELETE of Alice, and two of Bob's events retracted.
    let ids: Vec<String> = [
        "user_id:alice",
        "anonymous_id:anon-alice",
        "email:alice@example.com",
        "device_id:dev-alice",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let bob_retracted = ["e1-0", "e3-3"];
    let mut retractions: Vec<(Event, isize)> = all
        .iter()
        .filter(|(_, e)| e.user_id() == Some("alice") || bob_retracted.contains(&e.message_id()))
        .map(|(_, e)| (e.clone(), -1))
        .collect();
    retractions.sort();
    events.erase(5, &ids).unwrap();
    events.write(5, &retractions).unwrap();
    events.commit(&[6]).unwrap();
    let stats = events.stats();
    assert!(
        (stats.files_read as usize) < files_before,
        "bloom filters spare the files without Alice: read {} of {files_before}",
        stats.files_read
    );
    audiences.erase(5, &ids).unwrap();
    audiences
        .write(
            5,
            &[
                (m("churn", "user_id:alice"), -1),
                (m("vip", "anonymous_id:anon-alice"), -1),
                (m("vip", "user_id:alice"), -1),
            ],
        )
        .unwrap();
    audiences
        .write(6, &[(m("vip", "user_id:dave"), 1)])
        .unwrap();
    audiences.commit(&[]).unwrap();
    events.commit(&[]).unwrap();

    // Alice is in no file; everyone else is intact.
    let after = read_events(&events_root);
    after.assert_disk_is_manifest();
    assert!(
        !after.disk.iter().any(|f| f.ends_with(".tmp")),
        "no temporary file is left"
    );
    for row in &after.rows {
        assert!(!row.to_string().contains("alice"), "{row}");
    }
    let mut expected: Vec<(String, i64, i64)> = all
        .iter()
        .filter(|(_, e)| {
            e.user_id() != Some("alice")
                && e.message_id() != "bob-alias"
                && !bob_retracted.contains(&e.message_id())
        })
        .map(|(t, e)| (e.message_id().to_string(), *t as i64, 1))
        .collect();
    expected.sort();
    assert_eq!(after.event_keys(), expected);
    assert_eq!(
        stats.rows_removed as usize,
        before.rows.len() - after.rows.len()
    );
    // Exactly the files that held a removed row were replaced.
    let paths = |lake: &Lake| -> std::collections::BTreeSet<String> {
        lake.manifest["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["path"].as_str().unwrap().to_string())
            .collect()
    };
    let affected: std::collections::BTreeSet<String> = before
        .rows
        .iter()
        .filter(|r| {
            r.to_string().contains("alice")
                || bob_retracted.contains(&r["message_id"].as_str().unwrap())
        })
        .map(|r| r["_file"].as_str().unwrap().to_string())
        .collect();
    let (before_paths, after_paths) = (paths(&before), paths(&after));
    for f in &before_paths {
        assert_eq!(after_paths.contains(f), !affected.contains(f), "{f}");
    }

    let audiences_read = read_lake(&audiences_root, "weft_time", "", "audiences");
    audiences_read.assert_disk_is_manifest();
    let rows = duckdb(
        &audiences_root,
        "SELECT audience, profile, weft_time, weft_diff FROM lake ORDER BY weft_time, audience, profile",
    );
    assert_eq!(
        rows,
        json!([
            ["vip", "user_id:bob", 1, 1],
            ["churn", "user_id:carol", 3, 1],
            ["vip", "user_id:dave", 6, 1],
        ])
    );
    // DuckDB, globbing every file, finds no trace of her either.
    let found = duckdb(
        &events_root,
        "SELECT count(*) FROM lake WHERE concat_ws('|', user_id, anonymous_id, email, device_id, previous_id, properties, traits, context) LIKE '%alice%'",
    );
    assert_eq!(found, json!([[0]]));
}

#[test]
fn a_lake_belongs_to_one_sink() {
    let dir = tempfile::tempdir().unwrap();
    let mut lake = sink::<Membership>("audiences", dir.path(), 1 << 20);
    lake.write(
        1,
        &[(
            Membership {
                audience: "a".into(),
                profile: "user_id:x".into(),
            },
            1,
        )],
    )
    .unwrap();
    lake.commit(&[2]).unwrap();
    drop(lake);
    let err = ParquetLakeSink::<Membership>::open(LakeConfig::new("other", dir.path()))
        .err()
        .expect("another sink's lake is refused");
    assert!(err.to_string().contains("belongs to sink"), "{err}");
    let err = ParquetLakeSink::<Membership>::open(LakeConfig::new("a/b", PathBuf::from("x")))
        .err()
        .expect("a name that is not a directory name is refused");
    assert!(err.to_string().contains("letters, digits"), "{err}");
}

#[test]
fn derived_records_have_their_columns_and_can_be_erased() {
    use weft_dataflows::audience::{AggValue, TraitValue};
    use weft_dataflows::identity::{Identifier, ProfileChangeRecord, ProfileRecord, TraitRecord};
    let dir = tempfile::tempdir().unwrap();
    let t = (DAY0 + 5 * HOUR) as u64;
    let erase = |t: u64| vec![format!("user_id:gone-{t}")];

    /// Writes two records at `t` (one naming `user_id:gone-<t>`), erases
    /// that person at `t + 1`, commits, and reads the rows back.
    fn run<D: weft_connectors::lake::LakeRecord>(
        root: &Path,
        name: &str,
        t: u64,
        records: Vec<D>,
        erased: Vec<String>,
    ) -> Vec<Value> {
        let mut lake = sink::<D>(name, root, 1 << 20);
        let updates: Vec<(D, isize)> = records.into_iter().map(|r| (r, 1)).collect();
        lake.write(t, &updates).unwrap();
        lake.commit(&[t + 1]).unwrap();
        lake.erase(t + 1, &erased).unwrap();
        lake.commit(&[]).unwrap();
        let read = read_lake(root, "weft_time", "", name);
        read.assert_disk_is_manifest();
        read.rows
            .into_iter()
            .map(|mut r| {
                r.as_object_mut().unwrap().remove("_file");
                r
            })
            .collect()
    }
    let id = |k: &str, v: &str| Identifier::new(k, v);
    let gone = format!("gone-{t}");
    let ti = t as i64;

    let rows = run(
        &dir.path().join("computed"),
        "computed",
        t,
        vec![
            TraitValue {
                name: "ltv".into(),
                profile: "user_id:u1".into(),
                value: AggValue::List(vec![AggValue::Num(2.5), AggValue::Str("x".into())]),
            },
            TraitValue {
                name: "ltv".into(),
                profile: format!("user_id:{gone}"),
                value: AggValue::Num(1.0),
            },
        ],
        erase(t),
    );
    assert_eq!(
        rows,
        vec![
            json!({"trait": "ltv", "profile": "user_id:u1", "value": "[2.5,\"x\"]", "weft_time": ti, "weft_diff": 1})
        ]
    );

    let rows = run(
        &dir.path().join("identities"),
        "identities",
        t,
        vec![
            ProfileRecord {
                identifier: id("email", "u1@example.com"),
                profile: id("user_id", "u1"),
            },
            ProfileRecord {
                identifier: id("email", "g@example.com"),
                profile: id("user_id", &gone),
            },
        ],
        erase(t),
    );
    assert_eq!(
        rows,
        vec![
            json!({"identifier": "email:u1@example.com", "profile": "user_id:u1", "weft_time": ti, "weft_diff": 1})
        ]
    );

    let rows = run(
        &dir.path().join("traits"),
        "traits",
        t,
        vec![
            TraitRecord {
                profile: id("user_id", "u1"),
                key: "plan".into(),
                value: "\"pro\"".into(),
            },
            TraitRecord {
                profile: id("user_id", &gone),
                key: "plan".into(),
                value: "\"free\"".into(),
            },
        ],
        erase(t),
    );
    assert_eq!(
        rows,
        vec![
            json!({"profile": "user_id:u1", "key": "plan", "value": "\"pro\"", "weft_time": ti, "weft_diff": 1})
        ]
    );

    let change = |kind: &str, from: &str, into: &str| -> ProfileChangeRecord {
        serde_json::from_value(json!({
            "kind": kind,
            "from": {"kind": "user_id", "value": from},
            "into": {"kind": "user_id", "value": into},
            "identifiers": 3,
        }))
        .unwrap()
    };
    let rows = run(
        &dir.path().join("changes"),
        "changes",
        t,
        vec![change("Merged", "u2", "u1"), change("Split", "u3", &gone)],
        erase(t),
    );
    assert_eq!(
        rows,
        vec![
            json!({"change": "profile_merged", "from": "user_id:u2", "into": "user_id:u1", "identifiers": 3, "weft_time": ti, "weft_diff": 1})
        ]
    );
}
