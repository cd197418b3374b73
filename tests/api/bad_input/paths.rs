//! Odd ids in the path, on every route: 400 `invalid_request` for an id
//! that cannot be one, 404 where no route matches.

use super::{run, sale_held_by_ann, spawn, Case, INVALID};
use crate::support::*;

/// Strings that are no sale id nor reservation id, as they stand in a
/// path (percent-encoded where a raw byte could not stand there).
fn odd_ids() -> Vec<(&'static str, String)> {
    let table: &[(&str, &str)] = &[
        ("{", "{"),
        ("}", "}"),
        ("{x}", "{x}"),
        (":", ":"),
        ("a:b", "a:b"),
        ("*", "*"),
        ("..", ".."),
        (".", "."),
        ("%7Bx%7D (encoded braces)", "%7Bx%7D"),
        ("%3A (encoded colon)", "%3A"),
        ("%2A (encoded star)", "%2A"),
        ("%2E%2E (encoded dots)", "%2E%2E"),
        ("%2F (encoded slash)", "a%2Fb"),
        ("%00 (NUL)", "a%00b"),
        ("%0A (newline)", "a%0Ab"),
        ("%20 (space)", "a%20b"),
        ("%FF (invalid UTF-8)", "a%FFb"),
        ("%C3%A9 (é)", "%C3%A9"),
        ("a bare %", "a%"),
        ("%zz", "%zz"),
        ("%25 (encoded %)", "a%25b"),
    ];
    let mut ids: Vec<_> = table.iter().map(|(l, id)| (*l, id.to_string())).collect();
    ids.extend([("65 chars", "a".repeat(65)), ("300 chars", "a".repeat(300))]);
    ids
}

/// Reservation ids that are no UUID (as they stand in a path).
const NOT_UUIDS: &[(&str, &str)] = &[
    ("short hex", "1234"),
    (
        "uuid with a bad char",
        "67e55044-10b1-426f-9247-bb680e5fe0cz",
    ),
    ("uuid too long", "67e55044-10b1-426f-9247-bb680e5fe0c81"),
    ("sql", "1%27%20OR%20%271%27%3D%271"),
];

/// The reservation routes: a GET and three POSTs after the id.
const ACTIONS: [&str; 4] = ["", "/confirm", "/cancel", "/extend"];

#[tokio::test]
async fn odd_ids_in_paths_are_refused() {
    let app = spawn().await;
    let (sale, rid) = sale_held_by_ann(&app).await;
    let before = counters(&app.view(&sale).await);
    let buyer = format!("Bearer {}", token("ann"));
    let admin = format!("Bearer {ADMIN}");
    let as_buyer: &[(&str, &[u8])] = &[("Authorization", buyer.as_bytes())];
    let json_ct: (&str, &[u8]) = ("Content-Type", b"application/json");
    let method = |action: &str| if action.is_empty() { "GET" } else { "POST" };

    let mut cases = Vec::new();
    for (label, id) in &odd_ids() {
        let p = format!("/v1/sales/{id}");
        cases.push(Case::raw(
            format!("GET sale {label}"),
            "GET",
            &p,
            &[],
            b"",
            INVALID,
        ));
        cases.push(Case::raw(
            format!("PUT sale {label}"),
            "PUT",
            &p,
            &[("Authorization", admin.as_bytes()), json_ct],
            br#"{"stock":1,"per_user_limit":1}"#,
            INVALID,
        ));
        cases.push(Case::raw(
            format!("reserve on sale {label}"),
            "POST",
            format!("{p}/reservations"),
            &[("Authorization", buyer.as_bytes()), json_ct],
            br#"{"quantity":1}"#,
            INVALID,
        ));
        for action in ACTIONS {
            let m = method(action);
            cases.push(Case::raw(
                format!("{m} reservation{action} on sale {label}"),
                m,
                format!("{p}/reservations/{rid}{action}"),
                as_buyer,
                b"",
                INVALID,
            ));
            cases.push(Case::raw(
                format!("{m} reservation {label}{action}"),
                m,
                format!("/v1/sales/{sale}/reservations/{id}{action}"),
                as_buyer,
                b"",
                INVALID,
            ));
        }
    }
    for (label, id) in NOT_UUIDS {
        cases.push(Case::raw(
            format!("GET reservation {label}"),
            "GET",
            format!("/v1/sales/{sale}/reservations/{id}"),
            as_buyer,
            b"",
            INVALID,
        ));
    }
    // Empty ids: no route matches.
    for (label, m, p) in [
        (
            "empty sale id",
            "GET",
            "/v1/sales//reservations".to_string(),
        ),
        (
            "empty reservation id",
            "POST",
            format!("/v1/sales/{sale}/reservations//confirm"),
        ),
        ("trailing slash", "GET", format!("/v1/sales/{sale}/")),
    ] {
        cases.push(Case::raw(label, m, p, as_buyer, b"", (404, "not_found")));
    }
    // A sale id that is valid but unknown, a reservation of another sale.
    cases.push(Case::raw(
        "unknown sale",
        "GET",
        "/v1/sales/no-such-sale-x",
        &[],
        b"",
        (404, "sale_not_found"),
    ));
    let other = app.sale(1, 1, 300).await;
    cases.push(Case::raw(
        "a reservation looked up under another sale",
        "GET",
        format!("/v1/sales/{other}/reservations/{rid}"),
        as_buyer,
        b"",
        (404, "reservation_not_found"),
    ));
    run(&app, cases).await;
    assert_eq!(
        counters(&app.view(&sale).await),
        before,
        "a refused request moved a unit"
    );
    let v = app.view(&other).await;
    assert_eq!((v["sold"].as_i64(), v["held"].as_i64()), (Some(0), Some(0)));
}
