//! Applying netted changes inside the open transaction: DDL first, then
//! per table one DELETE of every changed key and one COPY of the rows that
//! must exist, then the `users` updates.
//!
//! A row that must exist is deleted and copied in again (rather than
//! upserted), so its columns are exactly the record's: a property that a
//! new version of an event lacks is NULL, not left over.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::io::{self, Write};

use postgres::types::ToSql;
use postgres::Client;

use super::batch::{Pending, Row, TableChanges, UserChanges};
use super::naming::quote;
use super::pg_error;
use super::schema::Schema;
use super::tables::USERS;
use super::value::{copy_escape, pg_text, ColName, Val};

/// COPY data is sent in chunks of about this many bytes.
const COPY_CHUNK: usize = 1 << 20;

/// What a flush did.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Applied {
    /// Rows copied in.
    pub rows: u64,
    /// Keys deleted (including the rows then copied in again).
    pub deletes: u64,
    /// `users` rows changed.
    pub users: u64,
}

/// Applies `pending` in the open transaction.
pub(crate) fn apply(
    client: &mut Client,
    schema: &mut Schema,
    pending: Pending,
) -> io::Result<Applied> {
    let mut applied = Applied::default();
    // STEP 1. DDL, in one round trip.
    let ddl = schema.plan(&pending);
    if !ddl.is_empty() {
        client.batch_execute(&ddl).map_err(pg_error(format_args!(
            "cannot create or alter tables in schema {:?}",
            schema.name
        )))?;
    }
    // STEP 2. Row tables, in name order (a fixed lock order).
    let mut tables: Vec<_> = pending.tables.into_iter().collect();
    tables.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for (table, changes) in &tables {
        applied.deletes += delete_keys(client, schema, table, changes)?;
        applied.rows += copy_rows(client, schema, table, changes)?;
    }
    // STEP 3. Users.
    if !pending.users.is_empty() {
        applied.users = apply_users(client, schema, &pending.users)?;
    }
    Ok(applied)
}

/// Deletes every changed key of a table.
fn delete_keys(
    client: &mut Client,
    schema: &Schema,
    table: &str,
    changes: &TableChanges,
) -> io::Result<u64> {
    let key = changes.shape.key;
    let mut columns: Vec<Vec<&str>> = vec![Vec::with_capacity(changes.rows.len()); key.len()];
    for k in changes.rows.keys() {
        for (i, v) in k.iter().enumerate() {
            columns[i].push(v);
        }
    }
    let sql = if key.len() == 1 {
        format!(
            "DELETE FROM {} WHERE {} = ANY($1)",
            schema.qualified(table),
            quote(key[0])
        )
    } else {
        let names: Vec<String> = key.iter().map(|c| quote(c)).collect();
        let arrays: Vec<String> = (1..=key.len()).map(|i| format!("${i}::text[]")).collect();
        format!(
            "DELETE FROM {} WHERE ({}) IN (SELECT * FROM unnest({}))",
            schema.qualified(table),
            names.join(", "),
            arrays.join(", ")
        )
    };
    let params: Vec<&(dyn ToSql + Sync)> =
        columns.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
    client
        .execute(sql.as_str(), &params)
        .map_err(pg_error(format_args!(
            "cannot delete from {}",
            schema.qualified(table)
        )))
}

/// COPYs the rows that must exist; columns the table lacks (past its
/// column limit) are left out.
fn copy_rows(
    client: &mut Client,
    schema: &Schema,
    table: &str,
    changes: &TableChanges,
) -> io::Result<u64> {
    let rows: Vec<&Row> = changes.rows.values().flatten().collect();
    if rows.is_empty() {
        return Ok(0);
    }
    let columns: HashSet<&ColName> = rows.iter().flat_map(|r| r.iter().map(|(c, _)| c)).collect();
    let mut columns: Vec<&ColName> = columns
        .into_iter()
        .filter(|c| schema.column(table, c).is_some())
        .collect();
    columns.sort_unstable();
    let list: Vec<String> = columns.iter().map(|c| quote(c)).collect();
    let sql = format!(
        "COPY {} ({}) FROM STDIN",
        schema.qualified(table),
        list.join(", ")
    );
    let context = || format!("cannot copy rows into {}", schema.qualified(table));
    let mut writer = client.copy_in(sql.as_str()).map_err(pg_error(context()))?;
    let mut buf = Vec::with_capacity(COPY_CHUNK + 4096);
    for row in &rows {
        encode_row(&mut buf, &columns, row);
        if buf.len() >= COPY_CHUNK {
            writer
                .write_all(&buf)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", context())))?;
            buf.clear();
        }
    }
    writer
        .write_all(&buf)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", context())))?;
    writer.finish().map_err(pg_error(context()))
}

/// One line of COPY text: `row`'s values in `columns` order (both sorted).
fn encode_row(out: &mut Vec<u8>, columns: &[&ColName], row: &Row) {
    let mut values = row.iter().peekable();
    for (i, c) in columns.iter().enumerate() {
        if i > 0 {
            out.push(b'\t');
        }
        while values.peek().is_some_and(|(rc, _)| rc < *c) {
            values.next();
        }
        match values.peek() {
            Some((rc, v)) if rc == *c => match v.text() {
                Some(t) => copy_escape(out, &t),
                None => out.extend_from_slice(b"\\N"),
            },
            _ => out.extend_from_slice(b"\\N"),
        }
    }
    out.push(b'\n');
}

/// Upserts the changed `users` rows, sets and clears their columns, and
/// deletes the rows left without any trait.
fn apply_users(
    client: &mut Client,
    schema: &Schema,
    users: &HashMap<String, UserChanges>,
) -> io::Result<u64> {
    let table = schema.qualified(USERS);
    // STEP 1. Every changed profile has a row, stamped with its last change.
    let ids: Vec<&str> = users.keys().map(String::as_str).collect();
    let times: Vec<Option<String>> = users
        .values()
        .map(|u| {
            Val::millis(i64::try_from(u.time).unwrap_or(i64::MAX))
                .text()
                .map(Cow::into_owned)
        })
        .collect();
    client
        .execute(
            format!(
                "INSERT INTO {table} (id, received_at) \
             SELECT v.id, v.at::timestamptz FROM unnest($1::text[], $2::text[]) AS v(id, at) \
             ON CONFLICT (id) DO UPDATE SET received_at = EXCLUDED.received_at, uuid_ts = now()"
            )
            .as_str(),
            &[&ids, &times],
        )
        .map_err(pg_error(format_args!("cannot upsert into {table}")))?;
    // STEP 2. One UPDATE per changed column.
    let mut by_column: HashMap<&ColName, (Vec<&str>, Vec<Option<String>>)> = HashMap::new();
    for (id, u) in users {
        for (c, v) in &u.columns {
            let entry = by_column.entry(c).or_default();
            entry.0.push(id);
            entry.1.push(
                v.as_ref()
                    .and_then(|v| v.text())
                    .map(|t| pg_text(&t).into_owned()),
            );
        }
    }
    let mut columns: Vec<_> = by_column.into_iter().collect();
    columns.sort_unstable_by(|a, b| a.0.cmp(b.0));
    for (c, (ids, vals)) in columns {
        let Some(ty) = schema.column(USERS, c) else {
            continue; // past the column limit, or only ever NULL
        };
        client
            .execute(
                format!(
                    "UPDATE {table} AS u SET {c} = v.val::{ty} \
                 FROM unnest($1::text[], $2::text[]) AS v(id, val) WHERE u.id = v.id",
                    c = quote(c),
                    ty = ty.sql()
                )
                .as_str(),
                &[&ids, &vals],
            )
            .map_err(pg_error(format_args!(
                "cannot update column {c} of {table}"
            )))?;
    }
    // STEP 3. A row without any trait is deleted.
    client
        .execute(
            format!(
                "DELETE FROM {table} AS u WHERE u.id = ANY($1) \
             AND jsonb_strip_nulls(to_jsonb(u) - 'id' - 'received_at' - 'uuid_ts') = '{{}}'::jsonb"
            )
            .as_str(),
            &[&ids],
        )
        .map_err(pg_error(format_args!(
            "cannot delete empty rows from {table}"
        )))?;
    Ok(ids.len() as u64)
}
