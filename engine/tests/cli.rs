//! The `weft` command line: validate and run, exit codes and messages.

use std::process::Command;

fn weft() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weft"))
}

const JOB: &str = r#"
[job]
name = "cli"
[[sources]]
type = "file"
name = "events"
path = "events.jsonl"
[[sinks]]
type = "file"
name = "counts"
output = "counts"
path = "out/counts.jsonl"
"#;

#[test]
fn validate_accepts_good_specs_and_names_bad_keys() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("events.jsonl"), "").unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, JOB).unwrap();
    let out = weft().arg("validate").arg(&good).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        JOB.replace("output = \"counts\"", "output = \"count\""),
    )
    .unwrap();
    let out = weft().arg("validate").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("count") && err.contains("expected"), "{err}");

    let missing = dir.path().join("missing.toml");
    std::fs::write(&missing, JOB.replace("events.jsonl", "nope.jsonl")).unwrap();
    let out = weft().arg("validate").arg(&missing).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}

#[test]
fn run_prints_a_summary_and_writes_sinks() {
    let dir = tempfile::tempdir().unwrap();
    let mut events = String::new();
    for i in 0..100 {
        events.push_str(&format!(
            "{{\"type\":\"page\",\"anonymousId\":\"a{i}\",\"timestamp\":\"2026-01-01T00:00:00Z\"}}\n"
        ));
    }
    events.push_str("{oops\n");
    std::fs::write(dir.path().join("events.jsonl"), events).unwrap();
    std::fs::write(dir.path().join("job.toml"), JOB).unwrap();
    let out = weft()
        .args(["run", "--workers", "2"])
        .arg(dir.path().join("job.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("101 records") && err.contains("1 rejected"),
        "{err}"
    );
    assert!(err.contains("records/s"), "{err}");
    let counts = std::fs::read_to_string(dir.path().join("out/counts.jsonl")).unwrap();
    assert!(counts.contains(r#""key":"page","count":100"#), "{counts}");
}

#[test]
fn ctrl_c_drains_and_exits_cleanly() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(dir.path().join("events.jsonl")).unwrap(),
        );
        for i in 0..3_000_000 {
            writeln!(f, "{{\"type\":\"page\",\"anonymousId\":\"a{i}\",\"timestamp\":\"2026-01-01T00:00:00Z\"}}").unwrap();
        }
    }
    std::fs::write(dir.path().join("job.toml"), JOB).unwrap();
    let child = weft()
        .args(["run", "--workers", "1"])
        .arg(dir.path().join("job.toml"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(400));
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("interrupted"),
        "the run should have been interrupted: {err}"
    );
    // What was committed is consistent: every count line parses and the last
    // page count is below the input size.
    let counts = std::fs::read_to_string(dir.path().join("out/counts.jsonl")).unwrap();
    let last: i64 = counts
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["diff"] == 1)
        .map(|v| v["data"]["count"].as_i64().unwrap())
        .last()
        .unwrap_or(0);
    assert!(last < 3_000_000, "{last}");
}
