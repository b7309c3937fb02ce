//! The changes staged since the last flush, netted per row.
//!
//! Every staged change names a row by its table and primary key and either
//! sets it (an insertion: the whole row) or removes it (a deletion). Only
//! the last change of a row counts, so the changes of several times reduce
//! to one DELETE and one COPY per table (the sink stages each time's
//! deletions before its insertions, and times in increasing order). Users
//! are netted per (profile, column) instead: a trait change sets or clears
//! single columns of a row that other traits share.

use std::collections::HashMap;
use std::sync::Arc;

use super::naming::Namer;
use super::tables::Shape;
use super::value::{pg_text, ColName, Val};

/// A row: its columns, sorted by name, each once.
pub(crate) type Row = Vec<(ColName, Val)>;

/// A primary key's values, in the order of [`Shape::key`].
pub(crate) type Key = Vec<String>;

/// The netted changes of one table.
pub(crate) struct TableChanges {
    pub shape: &'static Shape,
    /// `Some(row)`: the row as it must be; `None`: the row must not exist.
    pub rows: HashMap<Key, Option<Row>>,
}

/// The netted changes of one `users` row.
#[derive(Default)]
pub(crate) struct UserChanges {
    /// The logical time of the last change.
    pub time: u64,
    /// `Some(value)`: set the column; `None`: clear it.
    pub columns: HashMap<ColName, Option<Val>>,
}

/// Changes staged by [`super::WarehouseRecord::stage`], waiting for a flush.
///
/// Opaque outside this crate: records stage into it through the
/// implementations Weft provides.
#[derive(Default)]
pub struct Batch {
    pub(crate) namer: Namer,
    pub(crate) tables: HashMap<Arc<str>, TableChanges>,
    pub(crate) users: HashMap<String, UserChanges>,
    /// Approximate bytes held.
    pub(crate) bytes: usize,
    /// Objects (`properties`, `traits`, `context`) that were not valid JSON
    /// objects and were left out.
    pub(crate) unreadable: u64,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("tables", &self.tables.len())
            .field("users", &self.users.len())
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

/// The netted changes taken out of a [`Batch`] for a flush.
#[derive(Default)]
pub(crate) struct Pending {
    pub tables: HashMap<Arc<str>, TableChanges>,
    pub users: HashMap<String, UserChanges>,
}

impl Batch {
    /// Sets (`Some`) or removes (`None`) the row of `table` with `key`.
    pub(crate) fn put(&mut self, table: &str, shape: &'static Shape, key: Key, row: Option<Row>) {
        self.bytes += 64
            + key.iter().map(String::len).sum::<usize>()
            + row
                .as_ref()
                .map_or(0, |r| r.iter().map(|(c, v)| c.len() + v.size()).sum());
        let row = row.map(normalize);
        match self.tables.get_mut(table) {
            Some(t) => {
                t.rows.insert(key, row);
            }
            None => {
                let mut rows = HashMap::new();
                rows.insert(key, row);
                self.tables
                    .insert(Arc::from(table), TableChanges { shape, rows });
            }
        }
    }

    /// Sets (`Some`, not NULL) or clears (`None`) one trait column of a profile's `users` row.
    pub(crate) fn set_user(&mut self, profile: &str, column: ColName, val: Option<Val>, time: u64) {
        self.bytes += 48 + column.len() + val.as_ref().map_or(0, Val::size);
        let val = val.filter(|v| *v != Val::Null);
        let user = self.user(profile);
        user.time = user.time.max(time);
        user.columns.insert(column, val);
    }

    /// Records that a profile changed at `time` without naming a column (its
    /// row is then checked for emptiness).
    pub(crate) fn touch_user(&mut self, profile: &str, time: u64) {
        let user = self.user(profile);
        user.time = user.time.max(time);
    }

    fn user(&mut self, profile: &str) -> &mut UserChanges {
        let key = pg_text(profile);
        if !self.users.contains_key(&*key) {
            self.bytes += key.len() + 64;
            self.users
                .insert(key.clone().into_owned(), UserChanges::default());
        }
        self.users.get_mut(&*key).expect("inserted above")
    }

    /// Whether nothing is staged.
    pub(crate) fn is_empty(&self) -> bool {
        self.tables.is_empty() && self.users.is_empty()
    }

    /// Takes the staged changes out (the name caches stay).
    pub(crate) fn take(&mut self) -> Pending {
        self.bytes = 0;
        Pending {
            tables: std::mem::take(&mut self.tables),
            users: std::mem::take(&mut self.users),
        }
    }
}

/// Sorts a row's columns by name; of two values for one column the later wins.
fn normalize(mut row: Row) -> Row {
    row.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out: Row = Vec::with_capacity(row.len());
    for (c, v) in row {
        match out.last_mut() {
            Some(last) if last.0 == c => last.1 = v,
            _ => out.push((c, v)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::warehouse::tables::TRACK_SHAPE;

    #[test]
    fn the_last_change_of_a_row_wins() {
        let mut b = Batch::default();
        let row = |v: i64| {
            vec![
                (ColName::Static("b"), Val::Int(v)),
                (ColName::Static("a"), Val::Int(1)),
                (ColName::Static("b"), Val::Int(v + 1)),
            ]
        };
        b.put("t", &TRACK_SHAPE, vec!["k".into()], Some(row(1)));
        b.put("t", &TRACK_SHAPE, vec!["k".into()], None);
        b.put("t", &TRACK_SHAPE, vec!["k2".into()], Some(row(5)));
        let p = b.take();
        let t = &p.tables["t"];
        assert_eq!(t.rows[&vec!["k".to_string()]], None);
        assert_eq!(
            t.rows[&vec!["k2".to_string()]],
            Some(vec![
                (ColName::Static("a"), Val::Int(1)),
                (ColName::Static("b"), Val::Int(6))
            ])
        );
        assert!(b.is_empty());
        b.set_user("p\0", ColName::Static("x"), Some(Val::Null), 3);
        assert_eq!(b.users["p\u{FFFD}"].columns[&ColName::Static("x")], None);
    }
}
