//! What the sink knows of its schema's tables, and the DDL that makes a
//! flush's rows fit.
//!
//! The cache is read from `information_schema.columns` when the sink opens
//! and updated as the sink issues DDL (in the flush's transaction: if that
//! transaction fails, the sink is unusable and a reopened sink reads the
//! cache again). It assumes that nothing else alters the sink's tables
//! meanwhile; DDL uses `IF NOT EXISTS` so that tables and columns made by
//! another writer are not an error.

use std::collections::{HashMap, HashSet};

use postgres::Client;

use super::batch::Pending;
use super::naming::quote;
use super::tables::{Shape, USERS, USER_SHAPE};
use super::value::ColType;

/// The most columns Weft gives a table (PostgreSQL's limit is 1600,
/// counting dropped columns). Values for columns past it are not stored.
pub const MAX_COLUMNS: usize = 1500;

/// The cached tables of one schema.
pub(crate) struct Schema {
    /// The schema's name.
    pub name: String,
    /// Table → column → type.
    tables: HashMap<String, HashMap<String, ColType>>,
    /// Tables that reached [`MAX_COLUMNS`] (warned once each).
    full: HashSet<String>,
}

impl Schema {
    /// Reads the schema's tables and columns.
    pub(crate) fn load(client: &mut Client, name: &str) -> Result<Schema, postgres::Error> {
        let rows = client.query(
            "SELECT table_name::text, column_name::text, data_type::text \
             FROM information_schema.columns WHERE table_schema = $1",
            &[&name],
        )?;
        let mut tables: HashMap<String, HashMap<String, ColType>> = HashMap::new();
        for r in rows {
            let (table, column, data_type): (String, String, String) =
                (r.get(0), r.get(1), r.get(2));
            tables
                .entry(table)
                .or_default()
                .insert(column, ColType::from_information_schema(&data_type));
        }
        Ok(Schema {
            name: name.to_string(),
            tables,
            full: HashSet::new(),
        })
    }

    /// `"schema"."table"`.
    pub(crate) fn qualified(&self, table: &str) -> String {
        format!("{}.{}", quote(&self.name), quote(table))
    }

    /// A column's type, if the table has it.
    pub(crate) fn column(&self, table: &str, column: &str) -> Option<ColType> {
        self.tables.get(table)?.get(column).copied()
    }

    /// The DDL (one SQL text, possibly empty) that creates the missing tables
    /// and columns of `pending` and widens conflicting columns; the cache is
    /// updated as if it ran.
    ///
    /// Each table's DDL first takes a transaction-level advisory lock on the
    /// table's name: two writers creating the same table at once could
    /// otherwise fail. A lock per table (not per schema) keeps sinks of
    /// different record types, which share a worker thread and hold their
    /// transactions open between early flushes and commits, from waiting on
    /// each other.
    pub(crate) fn plan(&mut self, pending: &Pending) -> String {
        let mut ddl = String::new();
        let mut names: Vec<&str> = pending.tables.keys().map(|t| &**t).collect();
        names.sort_unstable();
        for table in names {
            let changes = &pending.tables[table];
            self.create_table(table, changes.shape, &mut ddl);
            if !changes.shape.inferred {
                continue;
            }
            let mut needed: HashMap<&str, ColType> = HashMap::new();
            for row in changes.rows.values().flatten() {
                for (c, v) in row {
                    if let Some(t) = v.col_type() {
                        if !changes.shape.is_fixed(c) {
                            needed.entry(c).and_modify(|x| *x = x.merge(t)).or_insert(t);
                        }
                    }
                }
            }
            self.fit_columns(table, &needed, &mut ddl);
        }
        if !pending.users.is_empty() {
            self.create_table(USERS, &USER_SHAPE, &mut ddl);
            let mut needed: HashMap<&str, ColType> = HashMap::new();
            for u in pending.users.values() {
                for (c, v) in &u.columns {
                    if let Some(t) = v.as_ref().and_then(|v| v.col_type()) {
                        needed.entry(c).and_modify(|x| *x = x.merge(t)).or_insert(t);
                    }
                }
            }
            self.fit_columns(USERS, &needed, &mut ddl);
        }
        ddl
    }

    fn create_table(&mut self, table: &str, shape: &Shape, ddl: &mut String) {
        if self.tables.contains_key(table) {
            return;
        }
        self.lock_for_ddl(table, ddl);
        let mut columns: Vec<String> = shape
            .fixed
            .iter()
            .map(|(c, t)| format!("{} {}", quote(c), t.sql()))
            .collect();
        columns.push("uuid_ts timestamptz NOT NULL DEFAULT now()".into());
        let key: Vec<String> = shape.key.iter().map(|c| quote(c)).collect();
        ddl.push_str(&format!(
            "CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({}));\n",
            self.qualified(table),
            columns.join(", "),
            key.join(", ")
        ));
        let mut cached: HashMap<String, ColType> = shape
            .fixed
            .iter()
            .map(|(c, t)| (c.to_string(), *t))
            .collect();
        cached.insert("uuid_ts".into(), ColType::Timestamptz);
        self.tables.insert(table.to_string(), cached);
    }

    /// Adds missing columns and widens conflicting ones, in one ALTER TABLE.
    fn fit_columns(&mut self, table: &str, needed: &HashMap<&str, ColType>, ddl: &mut String) {
        let qualified = self.qualified(table);
        let columns = self.tables.entry(table.to_string()).or_default();
        let mut actions = Vec::new();
        let mut needed: Vec<(&str, ColType)> = needed.iter().map(|(c, t)| (*c, *t)).collect();
        needed.sort_unstable_by_key(|(c, _)| *c);
        for (c, t) in needed {
            match columns.get(c) {
                None if columns.len() >= MAX_COLUMNS => {
                    if self.full.insert(table.to_string()) {
                        tracing::warn!(table, "table has {MAX_COLUMNS} columns; values of new columns (first: {c}) are not stored");
                    }
                }
                None => {
                    actions.push(format!("ADD COLUMN IF NOT EXISTS {} {}", quote(c), t.sql()));
                    columns.insert(c.to_string(), t);
                }
                Some(&current) => {
                    let wide = current.merge(t);
                    if wide != current {
                        tracing::info!(
                            table,
                            column = c,
                            "widening column from {} to {}",
                            current.sql(),
                            wide.sql()
                        );
                        actions.push(format!(
                            "ALTER COLUMN {c} TYPE {t} USING {c}::{t}",
                            c = quote(c),
                            t = wide.sql()
                        ));
                        columns.insert(c.to_string(), wide);
                    }
                }
            }
        }
        if !actions.is_empty() {
            self.lock_for_ddl(table, ddl);
            ddl.push_str(&format!(
                "ALTER TABLE {qualified} {};\n",
                actions.join(", ")
            ));
        }
    }

    /// Takes the table's DDL lock (once per flush; it is held to the
    /// transaction's end, and taking it again is harmless).
    fn lock_for_ddl(&self, table: &str, ddl: &mut String) {
        let lock = format!(
            "SELECT pg_advisory_xact_lock(hashtext({}));\n",
            sql_literal(&format!("weft-ddl:{}.{table}", self.name))
        );
        if !ddl.contains(&lock) {
            ddl.push_str(&lock);
        }
    }
}

/// A SQL string literal.
pub(crate) fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
