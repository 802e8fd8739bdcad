//! The SQLite inventory.

use std::collections::HashSet;
use std::sync::Arc;

use certgen::{
    CaParams, CertificateAuthority, ClientParams, Inventory, InventoryError, ListQuery,
    RevocationReason, Status,
};
use time::OffsetDateTime;

fn serial(i: u32) -> String {
    format!(
        "{:032x}",
        0x8000_0000_0000_0000_0000_0000_0000_0000u128 + u128::from(i)
    )
}

fn t(unix: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix).unwrap()
}

/// Ten certificates per identity for alice, bob and carol, interleaved.
fn filled() -> Inventory {
    let inv = Inventory::open_in_memory().unwrap();
    for i in 0..30 {
        let identity = ["alice", "bob", "carol"][(i % 3) as usize];
        inv.record(&serial(i), identity, t(1000), t(2000 + i64::from(i)))
            .unwrap();
    }
    inv
}

fn all_pages(inv: &Inventory, mut query: ListQuery, now: OffsetDateTime) -> Vec<String> {
    let mut serials = Vec::new();
    loop {
        let page = inv.list(&query, now).unwrap();
        assert!(page.records.len() <= query.page_size as usize);
        serials.extend(page.records.into_iter().map(|r| r.serial_hex));
        if page.next_page_token.is_empty() {
            return serials;
        }
        query.page_token = page.next_page_token;
    }
}

#[test]
fn record_get_and_duplicates() {
    let inv = Inventory::open_in_memory().unwrap();
    inv.record(&serial(1), "alice", t(1000), t(2000)).unwrap();
    let rec = inv
        .get(&serial(1).to_uppercase(), t(1500))
        .unwrap()
        .unwrap();
    assert_eq!(rec.identity, "alice");
    assert_eq!(rec.serial_hex, serial(1));
    assert_eq!((rec.not_before, rec.not_after), (t(1000), t(2000)));
    assert_eq!(rec.status, Status::Active);
    assert_eq!(rec.revocation, None);
    assert_eq!(
        inv.get(&serial(1), t(2001)).unwrap().unwrap().status,
        Status::Expired
    );
    assert!(inv.get(&serial(2), t(1500)).unwrap().is_none());
    assert!(matches!(
        inv.record(&serial(1), "bob", t(1000), t(2000)),
        Err(InventoryError::Duplicate(_))
    ));
    assert!(matches!(
        inv.record("zz", "bob", t(1000), t(2000)),
        Err(InventoryError::Serial(_))
    ));
    assert!(matches!(
        inv.record(&serial(3), "../bob", t(1000), t(2000)),
        Err(InventoryError::Name(_))
    ));
}

#[test]
fn revoke_once_only_and_only_known_serials() {
    let inv = Inventory::open_in_memory().unwrap();
    inv.record(&serial(1), "alice", t(1000), t(2000)).unwrap();
    let rec = inv
        .revoke(&serial(1), RevocationReason::KeyCompromise, t(1500))
        .unwrap();
    assert_eq!(rec.status, Status::Revoked);
    assert_eq!(
        rec.revocation,
        Some((RevocationReason::KeyCompromise, t(1500)))
    );
    assert!(matches!(
        inv.revoke(&serial(1), RevocationReason::Superseded, t(1600)),
        Err(InventoryError::AlreadyRevoked(_))
    ));
    assert!(matches!(
        inv.revoke(&serial(9), RevocationReason::Superseded, t(1600)),
        Err(InventoryError::UnknownSerial(_))
    ));
    // The first revocation stands.
    let rec = inv.get(&serial(1), t(1700)).unwrap().unwrap();
    assert_eq!(
        rec.revocation,
        Some((RevocationReason::KeyCompromise, t(1500)))
    );
}

#[test]
fn concurrent_revocations_of_one_certificate_succeed_once() {
    let inv = Arc::new(Inventory::open_in_memory().unwrap());
    inv.record(&serial(1), "alice", t(1000), t(2000)).unwrap();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let inv = Arc::clone(&inv);
            std::thread::spawn(move || {
                inv.revoke(&serial(1), RevocationReason::KeyCompromise, t(1500))
                    .is_ok()
            })
        })
        .collect();
    let successes = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|ok| *ok)
        .count();
    assert_eq!(successes, 1);
}

#[test]
fn list_pages_cover_everything_once_in_issuance_order() {
    let inv = filled();
    let query = ListQuery {
        page_size: 7,
        ..ListQuery::default()
    };
    let serials = all_pages(&inv, query, t(1500));
    assert_eq!(serials, (0..30).map(serial).collect::<Vec<_>>());

    let page = inv.list(&ListQuery::default(), t(1500)).unwrap();
    assert_eq!(page.records.len(), 30);
    assert!(page.next_page_token.is_empty());
}

#[test]
fn list_filters_by_identity_and_status() {
    let inv = filled();
    inv.revoke(&serial(0), RevocationReason::Superseded, t(1500))
        .unwrap();
    inv.revoke(&serial(3), RevocationReason::KeyCompromise, t(1500))
        .unwrap();
    // At t = 2010, certificates 0..=9 have passed notAfter (2000 + i).
    let now = t(2010);
    let q = |identity: Option<&str>, status: Option<Status>| ListQuery {
        identity: identity.map(str::to_owned),
        status,
        page_size: 4,
        page_token: String::new(),
    };
    let alice: Vec<String> = (0..30).filter(|i| i % 3 == 0).map(serial).collect();
    assert_eq!(all_pages(&inv, q(Some("alice"), None), now), alice);
    assert_eq!(
        all_pages(&inv, q(Some("alice"), Some(Status::Revoked)), now),
        [serial(0), serial(3)]
    );
    assert_eq!(
        all_pages(&inv, q(None, Some(Status::Expired)), now),
        [1, 2, 4, 5, 6, 7, 8, 9].map(serial)
    );
    let active = all_pages(&inv, q(None, Some(Status::Active)), now);
    assert_eq!(active, (10..30).map(serial).collect::<Vec<_>>());
    let records = inv.list(&q(Some("alice"), None), now).unwrap().records;
    assert_eq!(records[0].status, Status::Revoked);
    assert_eq!(records[2].status, Status::Expired);
    assert!(all_pages(&inv, q(Some("nobody"), None), now).is_empty());
}

#[test]
fn pagination_is_stable_under_inserts_and_revocations() {
    let inv = filled();
    let first = inv
        .list(
            &ListQuery {
                page_size: 10,
                ..ListQuery::default()
            },
            t(1500),
        )
        .unwrap();
    // Between pages: new certificates arrive and one on a later page is revoked.
    for i in 100..105 {
        inv.record(&serial(i), "dave", t(1000), t(3000)).unwrap();
    }
    inv.revoke(&serial(15), RevocationReason::Superseded, t(1500))
        .unwrap();
    let rest = all_pages(
        &inv,
        ListQuery {
            page_size: 10,
            page_token: first.next_page_token.clone(),
            ..ListQuery::default()
        },
        t(1500),
    );
    let mut seen: Vec<String> = first.records.into_iter().map(|r| r.serial_hex).collect();
    seen.extend(rest);
    let expected: Vec<String> = (0..30).chain(100..105).map(serial).collect();
    assert_eq!(seen, expected);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), seen.len());
}

#[test]
fn bad_page_tokens_and_page_size_limits() {
    let inv = filled();
    for token in ["x", "s", "s-1", "s0", "12", "s1.5"] {
        let query = ListQuery {
            page_token: token.into(),
            ..ListQuery::default()
        };
        assert!(
            matches!(inv.list(&query, t(1500)), Err(InventoryError::PageToken)),
            "{token}"
        );
    }
    let huge = ListQuery {
        page_size: u32::MAX,
        ..ListQuery::default()
    };
    assert_eq!(inv.list(&huge, t(1500)).unwrap().records.len(), 30);
}

#[test]
fn inventory_persists_and_crl_numbers_keep_growing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inventory.sqlite");
    {
        let inv = Inventory::open(&path).unwrap();
        inv.record(&serial(1), "alice", t(1000), t(2000)).unwrap();
        inv.revoke(&serial(1), RevocationReason::PrivilegeWithdrawn, t(1500))
            .unwrap();
        assert_eq!(inv.next_crl_number().unwrap(), 1);
        assert_eq!(inv.next_crl_number().unwrap(), 2);
    }
    let inv = Inventory::open(&path).unwrap();
    let rec = inv.get(&serial(1), t(1600)).unwrap().unwrap();
    assert_eq!(
        rec.revocation,
        Some((RevocationReason::PrivilegeWithdrawn, t(1500)))
    );
    assert_eq!(inv.next_crl_number().unwrap(), 3);
}

/// Issue, record, revoke through the inventory, publish the CRL: the revoked certificate is
/// refused by webpki and the other one still passes.
#[test]
fn revocation_flows_from_inventory_into_the_crl() {
    let ca = CertificateAuthority::generate(&CaParams::default()).unwrap();
    let inv = Inventory::open_in_memory().unwrap();
    let alice = ca
        .issue_client(&ClientParams::new("alice", "cordon.test"))
        .unwrap();
    let bob = ca
        .issue_client(&ClientParams::new("bob", "cordon.test"))
        .unwrap();
    inv.record_issued(&alice, "alice").unwrap();
    inv.record_issued(&bob, "bob").unwrap();
    inv.revoke(
        &alice.serial_hex,
        RevocationReason::KeyCompromise,
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    let revoked = inv.revoked().unwrap();
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].serial_hex, alice.serial_hex);
    assert_eq!(revoked[0].reason, RevocationReason::KeyCompromise);
    let crl = ca
        .crl(
            &revoked,
            inv.next_crl_number().unwrap(),
            OffsetDateTime::now_utc() + time::Duration::hours(1),
        )
        .unwrap();

    let crl_list: webpki::CertRevocationList<'_> =
        webpki::BorrowedCertRevocationList::from_der(&crl.der)
            .unwrap()
            .into();
    let crls = [&crl_list];
    let options = || {
        Some(
            webpki::RevocationOptionsBuilder::new(&crls)
                .unwrap()
                .with_status_policy(webpki::UnknownStatusPolicy::Deny)
                .build(),
        )
    };
    let now = rustls_pki_types::UnixTime::now();
    let usage = webpki::KeyUsage::client_auth;
    assert_eq!(
        crate::support::verify_at(&ca, &alice.cert_der, &[], usage(), now, options()),
        Err(webpki::Error::CertRevoked)
    );
    crate::support::verify_at(&ca, &bob.cert_der, &[], usage(), now, options()).unwrap();
}
