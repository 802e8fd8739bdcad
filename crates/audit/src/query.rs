//! Queries and statistics over every segment, through read-only connections.
//!
//! Both work on a live log (WAL readers see committed transactions and never block the writer)
//! and on a stopped server's directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rusqlite::types::Value;

use crate::error::{Context, QueryError};
use crate::record::{Record, SUCCESS_STATUS};
use crate::segment::{RECORD_COLUMNS, audit_dir, decode_for_query, list_segments, open_reader};

/// Page size used when [`Query::page_size`] is 0.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// Largest page [`query_dir`] returns, whatever was asked.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// Entries in [`Stats::top_methods`] and [`Stats::top_tools`].
pub const TOP_N: usize = 10;
/// Entries in [`Stats::recent_failures`].
pub const RECENT_FAILURES: usize = 10;

/// Filters and pagination. Every `None` filter matches everything; results are in ascending seq
/// order, so pages stay stable while records are appended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    /// Exact identity.
    pub identity: Option<String>,
    /// Exact gRPC method path.
    pub method: Option<String>,
    /// Exact tool name.
    pub tool: Option<String>,
    /// `Some(true)`: status "OK" only; `Some(false)`: every other status.
    pub success: Option<bool>,
    /// Inclusive lower bound on `time_unix_ms`.
    pub since_unix_ms: Option<i64>,
    /// Exclusive upper bound on `time_unix_ms`.
    pub until_unix_ms: Option<i64>,
    /// Records per page; 0 means [`DEFAULT_PAGE_SIZE`], larger than [`MAX_PAGE_SIZE`] is capped.
    pub page_size: u32,
    /// Return records after this seq: the previous page's [`Page::next_after_seq`] (the gRPC
    /// `page_token`, as decimal text).
    pub after_seq: Option<u64>,
}

/// One page of query results.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// Matching records in ascending seq order.
    pub records: Vec<Record>,
    /// Set when more records match: pass it as [`Query::after_seq`] to get them.
    pub next_after_seq: Option<u64>,
}

/// Restricts statistics to recent records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatsQuery {
    /// Inclusive lower bound on `time_unix_ms`; `None` covers the whole log.
    pub since_unix_ms: Option<i64>,
}

/// A name and how many records carry it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Count {
    /// Method path or tool name.
    pub name: String,
    /// Number of records.
    pub count: u64,
}

/// Aggregates over every record of every kind in the time range.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    /// Records in range.
    pub total: u64,
    /// Fraction of records with status "OK"; 0 when there are none.
    pub success_rate: f64,
    /// The [`TOP_N`] most frequent non-empty methods, most frequent first, ties by name.
    pub top_methods: Vec<Count>,
    /// The [`TOP_N`] most frequent non-empty tools, most frequent first, ties by name.
    pub top_tools: Vec<Count>,
    /// The last [`RECENT_FAILURES`] records whose status is not "OK", newest first.
    pub recent_failures: Vec<Record>,
    /// Mean of `duration_us`; 0 when there are no records.
    pub mean_duration_us: f64,
    /// 99th percentile of `duration_us` by the nearest-rank method (the smallest value that at
    /// least 99% of records do not exceed); 0 when there are no records.
    pub p99_duration_us: f64,
}

fn segments_of(data_dir: &Path) -> Result<Vec<(u32, PathBuf)>, QueryError> {
    let dir = audit_dir(data_dir);
    if !dir.is_dir() {
        return Err(QueryError::NotFound(dir));
    }
    Ok(list_segments(&dir)?)
}

/// Runs `query` over the log in `data_dir`, which may be live or stopped.
pub fn query_dir(data_dir: &Path, query: &Query) -> Result<Page, QueryError> {
    let page_size = match query.page_size {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    } as usize;
    let sql = format!(
        "SELECT {RECORD_COLUMNS} FROM records WHERE seq > ?1 \
         AND (?2 IS NULL OR identity = ?2) AND (?3 IS NULL OR method = ?3) \
         AND (?4 IS NULL OR tool = ?4) AND (?5 IS NULL OR (status = '{SUCCESS_STATUS}') = ?5) \
         AND (?6 IS NULL OR time_unix_ms >= ?6) AND (?7 IS NULL OR time_unix_ms < ?7) \
         ORDER BY seq LIMIT ?8"
    );
    let text = |v: &Option<String>| v.clone().map_or(Value::Null, Value::Text);
    let int = |v: Option<i64>| v.map_or(Value::Null, Value::Integer);
    let after = i64::try_from(query.after_seq.unwrap_or(0)).unwrap_or(i64::MAX);
    // One more than a page tells whether another page exists.
    let wanted = page_size + 1;
    let mut records = Vec::with_capacity(wanted.min(1024));
    for (_, path) in segments_of(data_dir)? {
        let conn = open_reader(&path)?;
        let mut stmt = conn.prepare(&sql).at(&path)?;
        let remaining = i64::try_from(wanted - records.len()).unwrap_or(i64::MAX);
        let params = [
            Value::Integer(after),
            text(&query.identity),
            text(&query.method),
            text(&query.tool),
            query
                .success
                .map_or(Value::Null, |s| Value::Integer(i64::from(s))),
            int(query.since_unix_ms),
            int(query.until_unix_ms),
            Value::Integer(remaining),
        ];
        let mut rows = stmt.query(rusqlite::params_from_iter(params)).at(&path)?;
        while let Some(row) = rows.next().at(&path)? {
            records.push(decode_for_query(row, &path)?);
        }
        if records.len() >= wanted {
            break;
        }
    }
    let next_after_seq = if records.len() > page_size {
        records.truncate(page_size);
        records.last().map(|r| r.seq)
    } else {
        None
    };
    Ok(Page {
        records,
        next_after_seq,
    })
}

/// Computes [`Stats`] over the log in `data_dir`, which may be live or stopped.
pub fn stats_dir(data_dir: &Path, query: &StatsQuery) -> Result<Stats, QueryError> {
    let segments = segments_of(data_dir)?;
    let since = query.since_unix_ms.unwrap_or(i64::MIN);
    let mut total = 0u64;
    let mut successes = 0u64;
    let mut duration_sum = 0f64;
    let mut methods: HashMap<String, u64> = HashMap::new();
    let mut tools: HashMap<String, u64> = HashMap::new();
    let mut conns = Vec::with_capacity(segments.len());
    for (_, path) in &segments {
        let conn = open_reader(path)?;
        // One read transaction per segment keeps all the aggregates below on the same snapshot
        // while the writer keeps appending.
        conn.execute_batch("BEGIN").at(path)?;
        let (count, ok, sum): (i64, i64, f64) = conn
            .query_row(
                &format!(
                    "SELECT COUNT(*), COALESCE(SUM(status = '{SUCCESS_STATUS}'), 0), \
                     TOTAL(duration_us) FROM records WHERE time_unix_ms >= ?1"
                ),
                [since],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .at(path)?;
        total += count.unsigned_abs();
        successes += ok.unsigned_abs();
        duration_sum += sum;
        for (column, counts) in [("method", &mut methods), ("tool", &mut tools)] {
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT {column}, COUNT(*) FROM records \
                     WHERE time_unix_ms >= ?1 AND {column} != '' GROUP BY {column}"
                ))
                .at(path)?;
            let mut rows = stmt.query([since]).at(path)?;
            while let Some(row) = rows.next().at(path)? {
                let name: String = row.get(0).at(path)?;
                let n: i64 = row.get(1).at(path)?;
                *counts.entry(name).or_default() += n.unsigned_abs();
            }
        }
        conns.push((conn, path));
    }

    let mut recent_failures = Vec::new();
    for (conn, path) in conns.iter().rev() {
        let limit = i64::try_from(RECENT_FAILURES - recent_failures.len()).unwrap_or(0);
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {RECORD_COLUMNS} FROM records WHERE time_unix_ms >= ?1 \
                 AND status != '{SUCCESS_STATUS}' ORDER BY seq DESC LIMIT ?2"
            ))
            .at(path)?;
        let mut rows = stmt.query(rusqlite::params![since, limit]).at(path)?;
        while let Some(row) = rows.next().at(path)? {
            recent_failures.push(decode_for_query(row, path)?);
        }
        if recent_failures.len() >= RECENT_FAILURES {
            break;
        }
    }

    let p99_duration_us = if total == 0 {
        0.0
    } else {
        // Nearest rank: the value at rank ceil(0.99 * total) in ascending order, which is the
        // `top`-th largest value. Only the `top` largest of each segment can be it, so memory
        // stays at about 1% of the records instead of all of them.
        let rank = (total * 99).div_ceil(100);
        let top = total - rank + 1;
        let mut largest: Vec<i64> = Vec::new();
        for (conn, path) in &conns {
            let mut stmt = conn
                .prepare(
                    "SELECT duration_us FROM records WHERE time_unix_ms >= ?1 \
                     ORDER BY duration_us DESC LIMIT ?2",
                )
                .at(path)?;
            let limit = i64::try_from(top).unwrap_or(i64::MAX);
            let mut rows = stmt.query(rusqlite::params![since, limit]).at(path)?;
            while let Some(row) = rows.next().at(path)? {
                largest.push(row.get(0).at(path)?);
            }
        }
        largest.sort_unstable_by(|a, b| b.cmp(a));
        let index = usize::try_from(top - 1).unwrap_or(usize::MAX);
        largest.get(index).copied().unwrap_or(0) as f64
    };

    let (success_rate, mean_duration_us) = if total == 0 {
        (0.0, 0.0)
    } else {
        (successes as f64 / total as f64, duration_sum / total as f64)
    };
    Ok(Stats {
        total,
        success_rate,
        top_methods: top_n(methods),
        top_tools: top_n(tools),
        recent_failures,
        mean_duration_us,
        p99_duration_us,
    })
}

fn top_n(counts: HashMap<String, u64>) -> Vec<Count> {
    let mut counts: Vec<Count> = counts
        .into_iter()
        .map(|(name, count)| Count { name, count })
        .collect();
    counts.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
    counts.truncate(TOP_N);
    counts
}
