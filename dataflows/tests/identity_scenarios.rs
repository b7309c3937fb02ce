//! Identity resolution in the situations the rules exist for, checked on the
//! readable records sinks receive: a device shared by two users, blocked
//! values, alias chains, a retraction that splits a profile, groups, traits.
//! Each scenario runs at 1 and 3 workers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use differential_dataflow::input::Input;
use weft_dataflows::event::{parse_event, Event, ParseContext};
use weft_dataflows::identity::{
    identity, AccountRecord, Identifier, ProfileChangeRecord, ProfileRecord, TraitRecord,
};
use weft_dataflows::record::{write_change_line, WriteJson};
use weft_dataflows::spec::IdentitySpec;
use weft_operators::components::ChangeKind;

type Log<D> = Arc<Mutex<Vec<(D, u64, isize)>>>;

#[derive(Clone, Default)]
struct Logs {
    profiles: Log<ProfileRecord>,
    changes: Log<ProfileChangeRecord>,
    traits: Log<TraitRecord>,
    accounts: Log<AccountRecord>,
    account_traits: Log<TraitRecord>,
}

/// The accumulated outputs after one step.
#[derive(Debug, Default, Clone, PartialEq)]
struct State {
    /// "kind:value" → "kind:value" of its profile.
    profile: BTreeMap<String, String>,
    /// Merges and splits recorded at this step: (kind, from, into, identifiers).
    changes: Vec<(ChangeKind, String, String, u64)>,
    /// Earlier merges and splits retracted at this step (an identifier they name is gone).
    forgotten: Vec<(ChangeKind, String, String, u64)>,
    /// (profile, key) → value.
    traits: BTreeMap<(String, String), String>,
    /// (profile, account).
    accounts: BTreeSet<(String, String)>,
    /// (account, key) → value.
    account_traits: BTreeMap<(String, String), String>,
}

impl State {
    fn profile_of(&self, id: &str) -> &str {
        self.profile
            .get(id)
            .unwrap_or_else(|| panic!("{id} has no profile in {:?}", self.profile))
    }
    /// The identifiers of `id`'s profile.
    fn members_of(&self, id: &str) -> BTreeSet<&str> {
        let p = self.profile_of(id);
        self.profile
            .iter()
            .filter(|(_, q)| q.as_str() == p)
            .map(|(i, _)| i.as_str())
            .collect()
    }
}

fn name(i: &Identifier) -> String {
    format!("{}:{}", i.kind, i.value)
}

fn ev(json: &str) -> Event {
    parse_event(json.as_bytes(), &ParseContext::default()).unwrap_or_else(|e| panic!("{json}: {e}"))
}

/// Runs `steps` (each a list of (event JSON, +1/-1)) at logical times 0, 1, …
/// and returns the state after each step.
fn run(spec: &IdentitySpec, steps: &[Vec<(&str, isize)>], workers: usize) -> Vec<State> {
    let logs = Logs::default();
    let l = logs.clone();
    let spec = spec.clone();
    let steps: Arc<Vec<Vec<(Event, isize)>>> = Arc::new(
        steps
            .iter()
            .map(|s| s.iter().map(|(j, r)| (ev(j), *r)).collect())
            .collect(),
    );
    let n = steps.len();
    timely::execute(timely::Config::process(workers), move |worker| {
        let (l, spec) = (l.clone(), spec.clone());
        let index = worker.index();
        let mut input = worker.dataflow::<u64, _, _>(move |scope| {
            let (input, events) = scope.new_collection::<Event, isize>();
            let out = identity(events, &spec).expect("rules compile");
            let log = l.profiles.clone();
            out.profile_records()
                .inspect(move |x| log.lock().unwrap().push(x.clone()));
            let log = l.changes.clone();
            out.change_records()
                .inspect(move |x| log.lock().unwrap().push(x.clone()));
            let log = l.traits.clone();
            out.trait_records()
                .inspect(move |x| log.lock().unwrap().push(x.clone()));
            let log = l.accounts.clone();
            out.account_records()
                .inspect(move |x| log.lock().unwrap().push(x.clone()));
            let log = l.account_traits.clone();
            out.account_trait_records()
                .inspect(move |x| log.lock().unwrap().push(x.clone()));
            input
        });
        for (t, step) in steps.iter().enumerate() {
            input.advance_to(t as u64);
            if index == 0 {
                for (e, r) in step {
                    input.update(e.clone(), *r);
                }
            }
        }
    })
    .expect("timely runs");
    (0..n as u64)
        .map(|t| {
            let mut s = State::default();
            for (p, r) in acc(&logs.profiles, t) {
                assert_eq!(r, 1, "{p:?}");
                assert!(
                    s.profile
                        .insert(name(&p.identifier), name(&p.profile))
                        .is_none(),
                    "two profiles for {p:?}"
                );
            }
            let mut changes: Vec<_> = logs
                .changes
                .lock()
                .unwrap()
                .iter()
                .filter(|x| x.1 == t)
                .cloned()
                .collect();
            changes.sort();
            for (c, _, r) in changes {
                let c = (c.kind, name(&c.from), name(&c.into), c.identifiers);
                match r {
                    1 => s.changes.push(c),
                    -1 => s.forgotten.push(c),
                    _ => panic!("{c:?} with diff {r}"),
                }
            }
            for (x, _) in acc(&logs.traits, t) {
                s.traits
                    .insert((name(&x.profile), x.key.to_string()), x.value.to_string());
            }
            for (x, _) in acc(&logs.accounts, t) {
                s.accounts.insert((name(&x.profile), name(&x.account)));
            }
            for (x, _) in acc(&logs.account_traits, t) {
                s.account_traits
                    .insert((name(&x.profile), x.key.to_string()), x.value.to_string());
            }
            s
        })
        .collect()
}

fn acc<D: Ord + Clone>(log: &Log<D>, upto: u64) -> BTreeMap<D, isize> {
    let mut m = BTreeMap::new();
    for (d, t, r) in log.lock().unwrap().iter() {
        if *t <= upto {
            *m.entry(d.clone()).or_default() += r;
        }
    }
    m.retain(|_, r| *r != 0);
    m
}

/// Runs at 1 and 3 workers, checks both agree, returns the states.
fn scenario(spec: &IdentitySpec, steps: &[Vec<(&str, isize)>]) -> Vec<State> {
    let one = run(spec, steps, 1);
    let three = run(spec, steps, 3);
    assert_eq!(one, three, "1 and 3 workers disagree");
    one
}

fn set(xs: &[&'static str]) -> BTreeSet<&'static str> {
    xs.iter().copied().collect()
}

const U2_ON_PHONE: &str = r#"{"type":"track","event":"Login","userId":"u2","anonymousId":"a3","context":{"device":{"id":"phone"}},"timestamp":"2026-01-01T08:00:00Z"}"#;
const U1_ON_IPAD: &str = r#"{"type":"track","event":"Login","userId":"u1","anonymousId":"a1","context":{"device":{"id":"ipad"}},"timestamp":"2026-01-01T10:00:00Z"}"#;
const ANON_ON_IPAD: &str = r#"{"type":"page","anonymousId":"a2","context":{"device":{"id":"ipad"}},"timestamp":"2026-01-01T11:00:00Z"}"#;
const U2_ON_IPAD: &str = r#"{"type":"track","event":"Login","userId":"u2","anonymousId":"a2","context":{"device":{"id":"ipad"}},"timestamp":"2026-01-01T12:00:00Z"}"#;

#[test]
fn a_shared_device_does_not_merge_two_users() {
    // u2 has a profile of its own (phone); u1 logs in on a family iPad; someone
    // browses anonymously on it (after a logout reset the anonymous id); then
    // u2 logs in on the iPad with that anonymous id.
    let steps = vec![
        vec![(U2_ON_PHONE, 1), (U1_ON_IPAD, 1)],
        vec![(ANON_ON_IPAD, 1)],
        vec![(U2_ON_IPAD, 1)],
    ];
    let states = scenario(&IdentitySpec::default(), &steps);
    let last = &states[2];
    // The first user keeps the device and the anonymous session seen on it
    // before u2 logged in; u2 keeps its own profile.
    assert_eq!(
        last.members_of("user_id:u1"),
        set(&[
            "user_id:u1",
            "anonymous_id:a1",
            "device_id:ipad",
            "anonymous_id:a2"
        ])
    );
    assert_eq!(
        last.members_of("user_id:u2"),
        set(&["user_id:u2", "anonymous_id:a3", "device_id:phone"])
    );
    // Among identifiers first seen together, the user id names the profile.
    assert_eq!(last.profile_of("device_id:ipad"), "user_id:u1");
    assert!(states.iter().all(|s| s.changes.is_empty()), "{states:?}");

    // With room for two user ids, the same events do merge: the limit is what
    // prevents it. The merged profile keeps the older id, u2 (08:00).
    let mut loose = IdentitySpec::default();
    loose.limits.insert("user_id".into(), 2);
    let states = scenario(&loose, &steps);
    assert_eq!(states[1].profile_of("user_id:u1"), "user_id:u1");
    assert_eq!(states[2].profile_of("user_id:u1"), "user_id:u2");
    assert_eq!(
        states[2].changes,
        vec![(
            ChangeKind::Merged,
            "user_id:u1".into(),
            "user_id:u2".into(),
            4
        )]
    );
}

#[test]
fn a_shared_device_goes_to_whoever_was_seen_on_it_first_and_back() {
    // u2 logs in on the iPad before u1 (event time), though u1's event arrives first.
    let u2_earlier = U2_ON_IPAD.replace("12:00", "09:00");
    let steps = vec![
        vec![(U1_ON_IPAD, 1)],
        vec![(u2_earlier.as_str(), 1)],
        vec![(u2_earlier.as_str(), -1)],
    ];
    let states = scenario(&IdentitySpec::default(), &steps);
    assert_eq!(
        states[0].members_of("user_id:u1"),
        set(&["user_id:u1", "anonymous_id:a1", "device_id:ipad"])
    );
    // The device moves to u2, named by its oldest identifier.
    assert_eq!(
        states[1].members_of("user_id:u1"),
        set(&["user_id:u1", "anonymous_id:a1"])
    );
    assert_eq!(
        states[1].members_of("user_id:u2"),
        set(&["user_id:u2", "anonymous_id:a2", "device_id:ipad"])
    );
    assert_eq!(
        states[1].changes,
        vec![(
            ChangeKind::Split,
            "user_id:u1".into(),
            "user_id:u2".into(),
            1
        )]
    );
    // Retracting u2's only event (as a deletion does) gives the device back to
    // u1, and u2 no longer exists: the records that name it are retracted too.
    assert_eq!(
        states[2].members_of("user_id:u1"),
        set(&["user_id:u1", "anonymous_id:a1", "device_id:ipad"])
    );
    assert!(!states[2].profile.contains_key("user_id:u2"));
    assert_eq!(states[2].changes, vec![]);
    assert_eq!(states[2].forgotten, states[1].changes);
}

#[test]
fn blocked_values_never_link_profiles() {
    let steps = vec![vec![
        (
            r#"{"type":"identify","userId":"u1","anonymousId":"anonymous","traits":{"email":"null"},"timestamp":"2026-01-01T10:00:00Z"}"#,
            1,
        ),
        (
            r#"{"type":"identify","userId":"u2","anonymousId":"anonymous","traits":{"email":"null"},"context":{"device":{"id":"00000"}},"timestamp":"2026-01-01T10:00:00Z"}"#,
            1,
        ),
        (
            r#"{"type":"page","anonymousId":"anonymous","userId":"0","timestamp":"2026-01-01T10:00:00Z"}"#,
            1,
        ),
    ]];
    let states = scenario(&IdentitySpec::default(), &steps);
    let s = &states[0];
    assert_eq!(
        s.profile
            .keys()
            .map(String::as_str)
            .collect::<BTreeSet<_>>(),
        set(&["user_id:u1", "user_id:u2"])
    );
    assert_ne!(s.profile_of("user_id:u1"), s.profile_of("user_id:u2"));
    // A custom block list replaces the defaults: here "anonymous" becomes an ordinary value.
    let spec = IdentitySpec {
        blocked_values: vec!["null".into()],
        ..IdentitySpec::default()
    };
    let mut loose = spec.clone();
    loose.limits.insert("user_id".into(), 3);
    let states = scenario(&loose, &steps);
    assert_eq!(
        states[0].profile_of("user_id:u2"),
        states[0].profile_of("user_id:u1")
    );
    assert!(states[0].profile.contains_key("user_id:0"));
}

#[test]
fn alias_chains_merge_user_ids_and_wait_for_unseen_previous_ids() {
    let steps = vec![
        vec![(
            r#"{"type":"page","anonymousId":"a0","timestamp":"2026-01-01T10:00:00Z"}"#,
            1,
        )],
        vec![(
            r#"{"type":"alias","previousId":"a0","userId":"u1","timestamp":"2026-01-02T10:00:00Z"}"#,
            1,
        )],
        vec![
            (
                r#"{"type":"alias","previousId":"u1","userId":"u2","timestamp":"2026-01-03T10:00:00Z"}"#,
                1,
            ),
            (
                r#"{"type":"track","event":"Paid","userId":"u2","timestamp":"2026-01-03T11:00:00Z"}"#,
                1,
            ),
        ],
        vec![(
            r#"{"type":"alias","previousId":"u2","userId":"u3","timestamp":"2026-01-04T10:00:00Z"}"#,
            1,
        )],
        // An alias from an id nobody has shown yet links nothing...
        vec![(
            r#"{"type":"alias","previousId":"a9","userId":"u3","timestamp":"2026-01-05T10:00:00Z"}"#,
            1,
        )],
        // ...until it is seen.
        vec![(
            r#"{"type":"page","anonymousId":"a9","timestamp":"2026-01-06T10:00:00Z"}"#,
            1,
        )],
        // Retracting the middle alias splits the chain.
        vec![(
            r#"{"type":"alias","previousId":"u1","userId":"u2","timestamp":"2026-01-03T10:00:00Z"}"#,
            -1,
        )],
    ];
    let states = scenario(&IdentitySpec::default(), &steps);
    assert_eq!(
        states[1].members_of("anonymous_id:a0"),
        set(&["anonymous_id:a0", "user_id:u1"])
    );
    assert_eq!(
        states[3].members_of("anonymous_id:a0"),
        set(&["anonymous_id:a0", "user_id:u1", "user_id:u2", "user_id:u3"])
    );
    assert_eq!(states[3].profile_of("user_id:u3"), "anonymous_id:a0");
    assert!(!states[4].profile.contains_key("anonymous_id:a9"));
    assert_eq!(states[5].profile_of("anonymous_id:a9"), "anonymous_id:a0");
    assert_eq!(states[5].changes, vec![]); // a new identifier joining is not a merge of profiles
                                           // The split: a0's half keeps a0; the other half is named by its oldest identifier, u2.
    assert_eq!(
        states[6].members_of("anonymous_id:a0"),
        set(&["anonymous_id:a0", "user_id:u1"])
    );
    assert_eq!(
        states[6].members_of("user_id:u2"),
        set(&["user_id:u2", "user_id:u3", "anonymous_id:a9"])
    );
    assert_eq!(states[6].profile_of("user_id:u3"), "user_id:u2");
    assert_eq!(
        states[6].changes,
        vec![(
            ChangeKind::Split,
            "anonymous_id:a0".into(),
            "user_id:u2".into(),
            3
        )]
    );
}

#[test]
fn a_retracted_edge_splits_a_profile_and_each_half_keeps_its_oldest_id_and_traits() {
    let anon = r#"{"type":"page","anonymousId":"a1","timestamp":"2026-01-01T10:00:00Z"}"#;
    let login = r#"{"type":"identify","anonymousId":"a1","userId":"u1","traits":{"plan":"free","seen":1},"timestamp":"2026-01-02T10:00:00Z"}"#;
    let user = r#"{"type":"identify","userId":"u1","traits":{"plan":"pro"},"timestamp":"2026-01-03T10:00:00Z"}"#;
    let email = r#"{"type":"identify","userId":"u1","traits":{"email":"x@y.z","plan":"team"},"timestamp":"2026-01-04T10:00:00Z"}"#;
    let steps = vec![
        vec![(anon, 1), (user, 1), (email, 1)],
        vec![(login, 1)],
        vec![(login, -1)],
    ];
    let states = scenario(&IdentitySpec::default(), &steps);
    // Two profiles; u1's is named by u1 (seen 01-03, before the email on 01-04).
    assert_eq!(
        states[0].members_of("user_id:u1"),
        set(&["user_id:u1", "email:x@y.z"])
    );
    assert_eq!(states[0].profile_of("email:x@y.z"), "user_id:u1");
    assert_eq!(
        states[0]
            .traits
            .get(&("user_id:u1".into(), "plan".into()))
            .map(String::as_str),
        Some("\"team\"")
    );
    // The login merges them; the anonymous id is older and names the profile.
    assert_eq!(
        states[1].members_of("anonymous_id:a1"),
        set(&["anonymous_id:a1", "user_id:u1", "email:x@y.z"])
    );
    assert_eq!(
        states[1].changes,
        vec![(
            ChangeKind::Merged,
            "user_id:u1".into(),
            "anonymous_id:a1".into(),
            2
        )]
    );
    let t1 = |k: &str| {
        states[1]
            .traits
            .get(&("anonymous_id:a1".to_string(), k.to_string()))
            .cloned()
    };
    assert_eq!(t1("plan").as_deref(), Some("\"team\"")); // latest event time wins, not latest arrival
    assert_eq!(t1("seen").as_deref(), Some("1"));
    assert!(!states[1].traits.keys().any(|(p, _)| p == "user_id:u1"));
    // Retracting the login splits: a1 keeps its id, u1 gets its own back, traits follow.
    assert_eq!(
        states[2].members_of("anonymous_id:a1"),
        set(&["anonymous_id:a1"])
    );
    assert_eq!(
        states[2].members_of("user_id:u1"),
        set(&["user_id:u1", "email:x@y.z"])
    );
    assert_eq!(
        states[2].changes,
        vec![(
            ChangeKind::Split,
            "anonymous_id:a1".into(),
            "user_id:u1".into(),
            2
        )]
    );
    assert_eq!(states[2].traits, states[0].traits);
}

#[test]
fn groups_link_profiles_to_accounts_without_merging_users() {
    let steps = vec![
        vec![
            (
                r#"{"type":"group","groupId":"acme","userId":"u1","traits":{"name":"Acme","email":"billing@acme.io"},"timestamp":"2026-01-01T10:00:00Z"}"#,
                1,
            ),
            (
                r#"{"type":"group","groupId":"acme","userId":"u2","traits":{"name":"ACME Inc"},"timestamp":"2026-01-02T10:00:00Z"}"#,
                1,
            ),
            (
                r#"{"type":"group","groupId":"0","userId":"u3","timestamp":"2026-01-02T10:00:00Z"}"#,
                1,
            ),
        ],
        vec![(
            r#"{"type":"group","groupId":"acme","userId":"u2","traits":{"name":"ACME Inc"},"timestamp":"2026-01-02T10:00:00Z"}"#,
            -1,
        )],
    ];
    let states = scenario(&IdentitySpec::default(), &steps);
    let s = &states[0];
    assert_ne!(s.profile_of("user_id:u1"), s.profile_of("user_id:u2"));
    // The group's traits.email is the account's, not an identifier of u1.
    assert!(!s.profile.contains_key("email:billing@acme.io"));
    assert_eq!(
        s.accounts,
        [
            ("user_id:u1", "group_id:acme"),
            ("user_id:u2", "group_id:acme")
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
    );
    assert_eq!(
        s.account_traits
            .get(&("group_id:acme".into(), "name".into()))
            .map(String::as_str),
        Some("\"ACME Inc\"")
    );
    assert_eq!(
        s.account_traits
            .get(&("group_id:acme".into(), "email".into()))
            .map(String::as_str),
        Some("\"billing@acme.io\"")
    );
    let s = &states[1];
    assert_eq!(s.accounts.len(), 1);
    assert_eq!(
        s.account_traits
            .get(&("group_id:acme".into(), "name".into()))
            .map(String::as_str),
        Some("\"Acme\"")
    );
}

#[test]
fn records_encode_as_json_lines() {
    let steps = vec![vec![(
        r#"{"type":"identify","anonymousId":"a\"1","userId":"u1","traits":{"plan":{"tier":2}},"timestamp":"2026-01-01T10:00:00Z"}"#,
        1,
    )]];
    let states = run(&IdentitySpec::default(), &steps, 1);
    assert_eq!(states[0].profile.len(), 2);
    let rec = ProfileChangeRecord {
        kind: ChangeKind::Split,
        from: Identifier::new("anonymous_id", "a\"1"),
        into: Identifier::new("user_id", "u1"),
        identifiers: 2,
    };
    let mut out = Vec::new();
    write_change_line(&mut out, 7, 1, &rec);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["data"]["type"], "profile_split");
    assert_eq!(v["data"]["from"]["value"], "a\"1");
    assert_eq!(v["data"]["identifiers"], 2);
    let t = TraitRecord {
        profile: Identifier::new("user_id", "u1"),
        key: "plan".into(),
        value: r#"{"tier":2}"#.into(),
    };
    let mut out = Vec::new();
    t.write_json(&mut out);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["value"]["tier"], 2);
    let p = ProfileRecord {
        identifier: Identifier::new("email", "x@y"),
        profile: Identifier::new("user_id", "u1"),
    };
    let mut out = Vec::new();
    p.write_json(&mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        r#"{"identifier":{"kind":"email","value":"x@y"},"profile":{"kind":"user_id","value":"u1"}}"#
    );
}
