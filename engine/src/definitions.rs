//! Audiences and computed traits of a job: the ones its spec declares and the
//! ones added while it runs ("runtime definitions"), how a change is checked
//! against the others, and how runtime definitions persist.
//!
//! **Checks.** A runtime definition has a name of letters, digits, `-`, `_`
//! and `.`; a query that parses as an audience condition or as one aggregate
//! (a computed trait); and refers only to audiences and computed traits that
//! exist, of the right kind. A name declared in the spec cannot be taken,
//! replaced or dropped (change the spec for that). A definition that others
//! use cannot be dropped; replacing it rebuilds them too (they keep their own
//! queries and follow the new definition), so a replacement may neither
//! refer to one of them (a cycle) nor change kind while they use it.
//!
//! **Order.** Runtime definitions are kept in installation order; each refers
//! only to spec definitions and to earlier runtime ones. A replacement moves
//! the definition and everything rebuilt with it to the end.
//!
//! **Persistence.** The runtime definitions of a job are the file
//! `<state_dir>/definitions.json`, rewritten atomically (temporary file,
//! fsync, rename) *before* a change is sequenced to the workers: a change
//! that was applied is never forgotten by a restart. When the job is built
//! again, worker 0 reads the file and installs them before anything is
//! output (see `views`).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use weft_dataflows::query::{parse_audience, parse_computed_trait, Condition};
use weft_dataflows::spec::JobSpec;

/// Whether a definition is an audience or a computed trait.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefinitionKind {
    /// A boolean condition: its members.
    Audience,
    /// One aggregate: a value per profile.
    Trait,
}

impl DefinitionKind {
    /// `audience` or `trait`.
    pub fn as_str(self) -> &'static str {
        match self {
            DefinitionKind::Audience => "audience",
            DefinitionKind::Trait => "trait",
        }
    }
}

/// One audience or computed trait.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    /// Unique within the job (audiences and traits share one namespace).
    pub name: String,
    /// Audience or computed trait.
    pub kind: DefinitionKind,
    /// The query (docs/audiences.md).
    pub query: String,
    /// Audiences only: the key destinations receive; defaults to the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl Definition {
    /// The audience key sinks receive (the name unless `key` is set).
    pub fn key(&self) -> &str {
        self.key.as_deref().unwrap_or(&self.name)
    }

    /// Parses the query: `Ok(Some(condition))` for an audience, `Ok(None)`
    /// for a valid computed trait.
    pub fn parse(&self) -> Result<Option<Condition>, String> {
        match self.kind {
            DefinitionKind::Audience => parse_audience(&self.query)
                .map(Some)
                .map_err(|e| format!("query: {e}")),
            DefinitionKind::Trait => parse_computed_trait(&self.query)
                .map(|_| None)
                .map_err(|e| format!("query: {e}")),
        }
    }

    /// The audiences and computed traits the query refers to (none if it does not parse).
    pub fn references(&self) -> (Vec<String>, Vec<String>) {
        let (mut audiences, mut traits) = (Vec::new(), Vec::new());
        if let Ok(Some(c)) = self.parse() {
            c.audiences(&mut audiences);
            c.computed(&mut traits);
        }
        (audiences, traits)
    }

    fn uses(&self, name: &str) -> bool {
        let (a, t) = self.references();
        a.iter().chain(&t).any(|r| r == name)
    }
}

/// Why a change was refused: the HTTP status it maps to and a one-sentence reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DefinitionError {
    /// The request is malformed (400).
    #[error("{0}")]
    Invalid(String),
    /// No such definition (404).
    #[error("{0}")]
    NotFound(String),
    /// The change conflicts with the job's other definitions or state (409).
    #[error("{0}")]
    Conflict(String),
}

/// Where a definition comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Declared in the job spec (fixed while the job runs).
    Spec,
    /// Added while the job runs.
    Runtime,
}

/// A job's definitions: the spec's and the runtime ones, in order.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    spec: Vec<Definition>,
    runtime: Vec<Definition>,
}

impl Catalog {
    /// The spec's traits (first) and audiences.
    pub fn from_spec(spec: &JobSpec) -> Catalog {
        let traits = spec.traits.iter().map(|t| Definition {
            name: t.name.clone(),
            kind: DefinitionKind::Trait,
            query: t.query.clone(),
            key: None,
        });
        let audiences = spec.audiences.iter().map(|a| Definition {
            name: a.name.clone(),
            kind: DefinitionKind::Audience,
            query: a.query.clone(),
            key: a.key.clone(),
        });
        Catalog {
            spec: traits.chain(audiences).collect(),
            runtime: Vec::new(),
        }
    }

    /// Every definition with its origin: spec first, then runtime ones in order.
    pub fn all(&self) -> impl Iterator<Item = (&Definition, Origin)> {
        let spec = self.spec.iter().map(|d| (d, Origin::Spec));
        spec.chain(self.runtime.iter().map(|d| (d, Origin::Runtime)))
    }

    /// The runtime definitions, in installation order.
    pub fn runtime(&self) -> &[Definition] {
        &self.runtime
    }

    /// A definition by name.
    pub fn find(&self, name: &str) -> Option<(&Definition, Origin)> {
        self.all().find(|(d, _)| d.name == name)
    }

    /// Adds or replaces a runtime definition. Returns what the workers must
    /// (re)build, in order: `def`, then the runtime definitions that use it,
    /// directly or not. Leaves the catalog unchanged on error.
    pub fn set(&mut self, def: Definition) -> Result<Vec<Definition>, DefinitionError> {
        check_name(&def.name)?;
        if def.kind == DefinitionKind::Trait && def.key.is_some() {
            return Err(DefinitionError::Invalid(
                "`key` applies to audiences only".into(),
            ));
        }
        if def.key.as_deref().is_some_and(|k| k.trim().is_empty()) {
            return Err(DefinitionError::Invalid("`key` must not be empty".into()));
        }
        def.parse().map_err(DefinitionError::Invalid)?;
        if let Some((_, Origin::Spec)) = self.find(&def.name) {
            return Err(DefinitionError::Conflict(format!(
                "{:?} is declared in the job spec; change the spec to change it",
                def.name
            )));
        }
        let dependents = self.dependents(&def.name);
        let old = self.runtime.iter().find(|d| d.name == def.name);
        if let Some(old) = old.filter(|o| o.kind != def.kind) {
            if let Some(user) = dependents.first() {
                return Err(DefinitionError::Conflict(format!(
                    "{:?} is used by {:?} as {} {}; it cannot become {} {}",
                    def.name,
                    user.name,
                    article(old.kind),
                    old.kind.as_str(),
                    article(def.kind),
                    def.kind.as_str()
                )));
            }
        }
        let rebuilt: BTreeSet<&str> = dependents.iter().map(|d| d.name.as_str()).collect();
        self.check_references(&def, &rebuilt)?;
        let mut order = vec![def.clone()];
        order.extend(dependents);
        let moved: BTreeSet<String> = order.iter().map(|d| d.name.clone()).collect();
        self.runtime.retain(|d| !moved.contains(&d.name));
        self.runtime.extend(order.iter().cloned());
        Ok(order)
    }

    /// Drops a runtime definition that nothing uses.
    pub fn drop_definition(&mut self, name: &str) -> Result<(), DefinitionError> {
        match self.find(name) {
            None => Err(DefinitionError::NotFound(format!(
                "no audience or computed trait named {name:?}"
            ))),
            Some((_, Origin::Spec)) => Err(DefinitionError::Conflict(format!(
                "{name:?} is declared in the job spec; change the spec to drop it"
            ))),
            Some((_, Origin::Runtime)) => {
                if let Some(user) = self.dependents(name).first() {
                    return Err(DefinitionError::Conflict(format!(
                        "{name:?} is used by {:?}; drop that first",
                        user.name
                    )));
                }
                self.runtime.retain(|d| d.name != name);
                Ok(())
            }
        }
    }

    /// Adds persisted definitions in order, skipping (and describing) those
    /// that no longer fit the spec. Returns the accepted ones and the reasons.
    pub fn restore(&mut self, defs: Vec<Definition>) -> (Vec<Definition>, Vec<String>) {
        let mut problems = Vec::new();
        for def in defs {
            let name = def.name.clone();
            if let Err(e) = self.set(def) {
                problems.push(format!("runtime definition {name:?} is not restored: {e}"));
            }
        }
        (self.runtime.clone(), problems)
    }

    /// Runtime definitions that use `name`, directly or through others, in order.
    fn dependents(&self, name: &str) -> Vec<Definition> {
        let mut names: BTreeSet<&str> = BTreeSet::from([name]);
        let mut out = Vec::new();
        for d in &self.runtime {
            if d.name != name && names.iter().any(|n| d.uses(n)) {
                names.insert(&d.name);
                out.push(d.clone());
            }
        }
        out
    }

    /// Every reference of `def` exists with the right kind and is not rebuilt after it.
    fn check_references(
        &self,
        def: &Definition,
        rebuilt: &BTreeSet<&str>,
    ) -> Result<(), DefinitionError> {
        let (audiences, traits) = def.references();
        let wanted = audiences
            .iter()
            .map(|a| (a, DefinitionKind::Audience))
            .chain(traits.iter().map(|t| (t, DefinitionKind::Trait)));
        for (name, kind) in wanted {
            let what = kind.as_str();
            if name == &def.name || rebuilt.contains(name.as_str()) {
                return Err(DefinitionError::Conflict(format!(
                    "query: refers to {what} {name:?}, which uses {:?} (a cycle)",
                    def.name
                )));
            }
            match self.find(name) {
                Some((d, _)) if d.kind == kind => {}
                Some((d, _)) => {
                    return Err(DefinitionError::Invalid(format!(
                        "query: refers to {what} {name:?}, which is {} {}",
                        article(d.kind),
                        d.kind.as_str()
                    )))
                }
                None => {
                    return Err(DefinitionError::Invalid(format!(
                        "query: refers to {what} {name:?}, which is not defined"
                    )))
                }
            }
        }
        Ok(())
    }
}

fn article(kind: DefinitionKind) -> &'static str {
    match kind {
        DefinitionKind::Audience => "an",
        DefinitionKind::Trait => "a",
    }
}

fn check_name(name: &str) -> Result<(), DefinitionError> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(DefinitionError::Invalid(format!(
            "name: expected 1 to 100 letters, digits, '-', '_' or '.', got {name:?}"
        )))
    }
}

/// The file holding a job's runtime definitions.
pub fn definitions_path(spec: &JobSpec) -> PathBuf {
    spec.job
        .state_dir
        .clone()
        .unwrap_or_else(|| ".weft-state".into())
        .join("definitions.json")
}

#[derive(Serialize, Deserialize)]
struct DefinitionsFile {
    definitions: Vec<Definition>,
}

/// Reads persisted runtime definitions; a missing file holds none.
pub fn load(path: &Path) -> std::io::Result<Vec<Definition>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice::<DefinitionsFile>(&bytes)
            .map(|f| f.definitions)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Replaces the persisted runtime definitions atomically and durably.
pub fn save(path: &Path, definitions: &[Definition]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("json.tmp{}", std::process::id()));
    let file = DefinitionsFile {
        definitions: definitions.to_vec(),
    };
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(name: &str, kind: DefinitionKind, query: &str) -> Definition {
        Definition {
            name: name.into(),
            kind,
            query: query.into(),
            key: None,
        }
    }

    fn catalog() -> Catalog {
        let spec = JobSpec::from_toml(
            r#"
[job]
name = "j"
[[traits]]
name = "views"
query = 'count(page)'
[[audiences]]
name = "viewers"
query = 'computed.views > 0'
"#,
        )
        .unwrap();
        Catalog::from_spec(&spec)
    }

    use DefinitionKind::{Audience, Trait};

    #[test]
    fn additions_are_checked_against_the_others() {
        let mut c = catalog();
        assert!(c.set(def("a", Audience, r#"audience("viewers")"#)).is_ok());
        assert!(matches!(
            c.set(def("b", Audience, r#"audience("nope")"#)),
            Err(DefinitionError::Invalid(m)) if m.contains("not defined")
        ));
        assert!(matches!(
            c.set(def("b", Audience, "computed.viewers > 1")),
            Err(DefinitionError::Invalid(m)) if m.contains("is an audience")
        ));
        assert!(matches!(
            c.set(def("viewers", Audience, "count(page) > 1")),
            Err(DefinitionError::Conflict(m)) if m.contains("job spec")
        ));
        assert!(matches!(
            c.set(def("bad name", Audience, "count(page) > 1")),
            Err(DefinitionError::Invalid(_))
        ));
        assert!(matches!(
            c.set(def("b", Audience, "count(page) >=")),
            Err(DefinitionError::Invalid(m)) if m.starts_with("query: line 1")
        ));
        let mut t = def("t", Trait, "count(page)");
        t.key = Some("k".into());
        assert!(c.set(t).is_err());
        assert_eq!(c.runtime().len(), 1);
    }

    #[test]
    fn replacing_rebuilds_users_and_refuses_cycles() {
        let mut c = catalog();
        c.set(def("t", Trait, "count(track)")).unwrap();
        c.set(def("a", Audience, "computed.t > 1")).unwrap();
        c.set(def("b", Audience, r#"audience("a")"#)).unwrap();
        c.set(def("other", Audience, "count(page) > 1")).unwrap();
        let order: Vec<String> = c
            .set(def("t", Trait, "count(any)"))
            .unwrap()
            .into_iter()
            .map(|d| d.name)
            .collect();
        assert_eq!(order, ["t", "a", "b"]);
        let names: Vec<&str> = c.runtime().iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["other", "t", "a", "b"]);
        assert!(matches!(
            c.set(def("a", Audience, r#"audience("b")"#)),
            Err(DefinitionError::Conflict(m)) if m.contains("cycle")
        ));
        assert!(matches!(
            c.set(def("t", Audience, "count(page) > 1")),
            Err(DefinitionError::Conflict(m)) if m.contains("used by")
        ));
        assert!(matches!(
            c.drop_definition("a"),
            Err(DefinitionError::Conflict(m)) if m.contains("\"b\"")
        ));
        assert!(c.drop_definition("b").is_ok());
        assert!(c.drop_definition("a").is_ok());
        assert!(matches!(
            c.drop_definition("a"),
            Err(DefinitionError::NotFound(_))
        ));
    }

    #[test]
    fn persisted_definitions_round_trip_and_restore_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/definitions.json");
        assert!(load(&path).unwrap().is_empty());
        let defs = vec![
            def("t", Trait, "count(track)"),
            def("a", Audience, "computed.t > 1"),
            def("gone", Audience, r#"audience("removed_from_spec")"#),
        ];
        save(&path, &defs).unwrap();
        assert_eq!(load(&path).unwrap(), defs);
        let mut c = catalog();
        let (restored, problems) = c.restore(load(&path).unwrap());
        assert_eq!(restored, defs[..2].to_vec());
        assert_eq!(problems.len(), 1, "{problems:?}");
    }
}
