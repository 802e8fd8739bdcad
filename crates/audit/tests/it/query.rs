//! Query filters, pagination and statistics on a known data set spread over two segments.

use audit::{AuditLog, Count, Entry, Query, QueryError, StatsQuery, query_dir, stats_dir};

use crate::common::open;

/// Record `n` (seq `n + 1`) of the data set:
/// identity alice for even n, bob for odd n; method One for n < 100, Two for n < 160, Three after;
/// tool shell for n < 120, git for n < 170, none after; PERMISSION_DENIED when n % 10 == 9, OK
/// otherwise; time 1000 + n; duration n + 1.
fn known(n: u64) -> Entry {
    let mut e = crate::common::entry(n);
    e.identity = if n.is_multiple_of(2) { "alice" } else { "bob" }.to_owned();
    e.method = match n {
        0..100 => "/a.A/One",
        100..160 => "/a.A/Two",
        _ => "/a.A/Three",
    }
    .to_owned();
    e.tool = match n {
        0..120 => "shell",
        120..170 => "git",
        _ => "",
    }
    .to_owned();
    e.status = if n % 10 == 9 {
        "PERMISSION_DENIED"
    } else {
        "OK"
    }
    .to_owned();
    e.time_unix_ms = 1000 + n as i64;
    e.duration_us = n + 1;
    e
}

async fn known_log(dir: &std::path::Path) -> AuditLog {
    let log = open(dir);
    for n in 0..200 {
        if n == 130 {
            log.seal().await.unwrap().unwrap();
        }
        assert_eq!(log.append(known(n)).await.unwrap(), n + 1);
    }
    log
}

fn seqs(records: &[audit::Record]) -> Vec<u64> {
    records.iter().map(|r| r.seq).collect()
}

#[tokio::test]
async fn filters_select_exactly_the_matching_records() {
    let tmp = tempfile::tempdir().unwrap();
    let log = known_log(tmp.path()).await;
    let run = |q: Query| {
        let log = log.clone();
        async move {
            log.query(Query {
                page_size: 1000,
                ..q
            })
            .await
            .unwrap()
        }
    };

    let alice = run(Query {
        identity: Some("alice".into()),
        ..Query::default()
    })
    .await;
    assert_eq!(
        seqs(&alice.records),
        (1..=200).step_by(2).collect::<Vec<_>>()
    );
    assert!(alice.records.iter().all(|r| r.entry.identity == "alice"));

    let failed_two = run(Query {
        method: Some("/a.A/Two".into()),
        success: Some(false),
        ..Query::default()
    })
    .await;
    assert_eq!(
        seqs(&failed_two.records),
        vec![110, 120, 130, 140, 150, 160]
    );

    let succeeded = run(Query {
        success: Some(true),
        ..Query::default()
    })
    .await;
    assert_eq!(succeeded.records.len(), 180);

    let bob_git = run(Query {
        identity: Some("bob".into()),
        tool: Some("git".into()),
        ..Query::default()
    })
    .await;
    assert_eq!(
        seqs(&bob_git.records),
        (122..=170).step_by(2).collect::<Vec<_>>()
    );

    let window = run(Query {
        since_unix_ms: Some(1010),
        until_unix_ms: Some(1020),
        ..Query::default()
    })
    .await;
    assert_eq!(
        seqs(&window.records),
        (11..=20).collect::<Vec<_>>(),
        "since inclusive, until exclusive"
    );

    let nobody = run(Query {
        identity: Some("mallory".into()),
        ..Query::default()
    })
    .await;
    assert!(nobody.records.is_empty());
    assert_eq!(nobody.next_after_seq, None);
}

#[tokio::test]
async fn pagination_is_stable_and_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let log = known_log(tmp.path()).await;
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page = log
            .query(Query {
                identity: Some("alice".into()),
                page_size: 30,
                after_seq: after,
                ..Query::default()
            })
            .await
            .unwrap();
        pages.push(seqs(&page.records));
        // Records appended between pages land after the cursor and do not shift earlier pages.
        log.append(known(0)).await.unwrap();
        match page.next_after_seq {
            Some(seq) => {
                assert_eq!(Some(&seq), page.records.last().map(|r| &r.seq));
                after = Some(seq);
            }
            None => break,
        }
    }
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    // 100 original alice records plus the appended ones that the last pages picked up.
    assert_eq!(&sizes[..3], &[30, 30, 30]);
    let all: Vec<u64> = pages.concat();
    assert!(
        all.windows(2).all(|w| w[0] < w[1]),
        "ascending without duplicates"
    );
    assert_eq!(&all[..100], &(1..=200).step_by(2).collect::<Vec<_>>()[..]);

    let default = log.query(Query::default()).await.unwrap();
    assert_eq!(default.records.len(), audit::DEFAULT_PAGE_SIZE as usize);
    assert_eq!(default.next_after_seq, Some(100));
    let capped = query_dir(
        tmp.path(),
        &Query {
            page_size: 5000,
            ..Query::default()
        },
    )
    .unwrap();
    assert!(capped.records.len() <= audit::MAX_PAGE_SIZE as usize);
    assert_eq!(capped.records.len() as u64, log.head().seq);
}

#[tokio::test]
async fn stats_on_a_known_data_set() {
    let tmp = tempfile::tempdir().unwrap();
    let log = known_log(tmp.path()).await;
    let all = log.stats(StatsQuery::default()).await.unwrap();
    assert_eq!(all.total, 200);
    assert!(
        (all.success_rate - 0.9).abs() < 1e-12,
        "{}",
        all.success_rate
    );
    let count = |name: &str, count| Count {
        name: name.to_owned(),
        count,
    };
    assert_eq!(
        all.top_methods,
        vec![
            count("/a.A/One", 100),
            count("/a.A/Two", 60),
            count("/a.A/Three", 40)
        ]
    );
    assert_eq!(
        all.top_tools,
        vec![count("shell", 120), count("git", 50)],
        "empty tools are not counted"
    );
    assert_eq!(
        seqs(&all.recent_failures),
        (110..=200).rev().step_by(10).collect::<Vec<_>>()
    );
    assert!(
        all.recent_failures
            .iter()
            .all(|r| r.entry.status == "PERMISSION_DENIED")
    );
    assert!(
        (all.mean_duration_us - 100.5).abs() < 1e-9,
        "{}",
        all.mean_duration_us
    );
    // Nearest rank: ceil(0.99 * 200) = 198th smallest of 1..=200.
    assert_eq!(all.p99_duration_us, 198.0);

    let recent = stats_dir(
        tmp.path(),
        &StatsQuery {
            since_unix_ms: Some(1150),
        },
    )
    .unwrap();
    assert_eq!(recent.total, 50);
    assert!((recent.success_rate - 0.9).abs() < 1e-12);
    assert_eq!(
        recent.top_methods,
        vec![count("/a.A/Three", 40), count("/a.A/Two", 10)]
    );
    assert_eq!(recent.top_tools, vec![count("git", 20)]);
    assert_eq!(seqs(&recent.recent_failures), vec![200, 190, 180, 170, 160]);
    assert!((recent.mean_duration_us - 175.5).abs() < 1e-9);
    assert_eq!(
        recent.p99_duration_us, 200.0,
        "ceil(0.99 * 50) = 50th smallest"
    );

    let none = stats_dir(
        tmp.path(),
        &StatsQuery {
            since_unix_ms: Some(5000),
        },
    )
    .unwrap();
    assert_eq!(
        (none.total, none.success_rate, none.p99_duration_us),
        (0, 0.0, 0.0)
    );
    assert!(none.top_methods.is_empty() && none.recent_failures.is_empty());
}

#[test]
fn top_lists_hold_at_most_ten_names() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let log = open(tmp.path());
        for n in 0..24u64 {
            let mut e = known(0);
            // Twelve methods appear twice each, so the cut at ten is decided by name alone.
            e.method = format!("m{:02}", n % 12);
            log.append(e).await.unwrap();
        }
    });
    let stats = stats_dir(tmp.path(), &StatsQuery::default()).unwrap();
    assert_eq!(stats.top_methods.len(), audit::TOP_N);
    assert!(stats.top_methods.iter().all(|c| c.count == 2));
    let names: Vec<&str> = stats.top_methods.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "m00", "m01", "m02", "m03", "m04", "m05", "m06", "m07", "m08", "m09"
        ],
        "ties by name"
    );
}

#[test]
fn querying_a_missing_log_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(matches!(
        query_dir(tmp.path(), &Query::default()),
        Err(QueryError::NotFound(_))
    ));
    assert!(matches!(
        stats_dir(tmp.path(), &StatsQuery::default()),
        Err(QueryError::NotFound(_))
    ));
}
