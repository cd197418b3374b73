//! Several instances on one cluster, sales on every primary, and a
//! script call that the cluster client sends twice.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use flashgate::domain::ReserveOutcome;
use serde_json::json;

use crate::support::cluster::*;
use crate::support::*;

/// 500 buyers (and 50 of them twice more), stock 10, cap 2, spread over
/// three flashgate instances that share one cluster, one database and one
/// key prefix: exactly the stock is held, whichever instance answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Redis Cluster (FLASHGATE_TEST_REDIS_CLUSTER=1)"]
async fn a_burst_over_three_instances_sells_exactly_the_stock() {
    require_cluster();
    let db = fresh_database().await;
    let prefix = unique_prefix();
    let mut apps = Vec::new();
    for _ in 0..3 {
        apps.push(Arc::new(Spawn::shared(&db, &prefix).start().await));
    }
    crate::burst::burst_sells_exactly_the_stock(&apps).await;
}

/// Sales whose slots sit on different primaries: each sale's keys live on
/// its slot's primary, the scripts are on every primary, and reserve,
/// confirm, cancel and the write-behind work for all of them; a flushed
/// script cache (a restarted node) is refilled on the node that needs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Redis Cluster (FLASHGATE_TEST_REDIS_CLUSTER=1)"]
async fn sales_on_every_primary_reserve_confirm_and_reach_postgres() {
    require_cluster();
    let app = spawn_app().await;
    let nodes = cluster_nodes(&redis_urls()).await;
    let primaries: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.primary && !n.failed && !n.slots.is_empty())
        .collect();
    assert!(primaries.len() >= 3, "{nodes:?}");
    // The warm-up at start loaded every script into every primary.
    for p in &primaries {
        for name in flashgate::gate::ScriptName::ALL.iter().map(|n| n.file()) {
            assert!(script_exists(p, name).await, "{name} not on {}", p.addr);
        }
    }
    assert_eq!(
        app.service
            .gate
            .eviction_policy()
            .await
            .expect("CONFIG GET"),
        "noeviction"
    );
    app.service.gate.ping().await.expect("PING");

    // Two sales per primary, created through the API.
    let mut sales = Vec::new();
    for p in &primaries {
        for _ in 0..2 {
            let id = sale_id_on(p, &app.prefix).await;
            let (s, v) = app
                .put_sale(
                    &id,
                    json!({"stock": 5, "per_user_limit": 2, "hold_ttl_secs": 60}),
                )
                .await;
            assert_eq!(s, 201, "{v}");
            sales.push(((*p).clone(), id));
        }
    }
    // Every key of a sale (its hash tag) is on its slot's primary, and only there.
    for (p, id) in &sales {
        for n in &primaries {
            let mut c = node_conn(&n.url()).await;
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}:{{{id}}}:*", app.prefix))
                .query_async(&mut c)
                .await
                .expect("keys");
            if n.addr == p.addr {
                assert!(keys.len() >= 2, "sale and events on {}: {keys:?}", n.addr);
            } else {
                assert!(keys.is_empty(), "{id} has keys on {}: {keys:?}", n.addr);
            }
        }
    }
    let mut confirmed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (_, id) in &sales {
        let (s, a) = app.reserve(id, "ann", 2, None).await;
        assert_eq!(s, 201, "{a}");
        assert_eq!(app.act(id, &rid(&a), "confirm", Some("ann")).await.0, 200);
        let (s, b) = app.reserve(id, "bob", 1, Some("bob-1")).await;
        assert_eq!(s, 201, "{b}");
        assert_eq!(app.act(id, &rid(&b), "cancel", Some("bob")).await.0, 200);
        confirmed.entry(id.clone()).or_default().insert(rid(&a));
    }

    // A node restart empties its script cache: the next call on it loads
    // the script there (by EVAL, on that node only) and goes through.
    for p in &primaries {
        flush_scripts(p).await;
        assert!(!script_exists(p, "reserve").await);
    }
    for (_, id) in &sales {
        let (s, c) = app.reserve(id, "cid", 1, None).await;
        assert_eq!(s, 201, "after SCRIPT FLUSH: {c}");
        assert_eq!(app.act(id, &rid(&c), "confirm", Some("cid")).await.0, 200);
        confirmed.get_mut(id).expect("sale").insert(rid(&c));
        let v = app.view(id).await;
        assert_eq!(
            (
                v["sold"].as_i64(),
                v["held"].as_i64(),
                v["available"].as_i64()
            ),
            (Some(3), Some(0), Some(2)),
            "{v}"
        );
    }
    for p in &primaries {
        assert!(script_exists(p, "reserve").await, "reloaded on {}", p.addr);
    }

    app.drained(Duration::from_secs(20)).await;
    for (_, id) in &sales {
        let got: BTreeSet<String> = orders(&app.pool, id).await.into_keys().collect();
        assert_eq!(&got, &confirmed[id], "orders of {id}");
        let events: Vec<(String, i64)> = sqlx::query_as(
            "SELECT kind, count(*) FROM stock_movements WHERE sale_id = $1 GROUP BY kind ORDER BY kind",
        )
        .bind(id)
        .fetch_all(&app.pool)
        .await
        .expect("movements");
        let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
        for kind in ["cancelled", "confirmed", "reserved"] {
            assert!(kinds.contains(&kind), "{id}: {events:?}");
        }
    }
}

/// The cluster client sends a call again when its connection dropped (a
/// primary died), and the call may already have run: a reserve script run
/// twice with the same reservation id holds the units once. (Needs no
/// cluster: it runs on whatever Redis the suite uses.)
#[tokio::test]
async fn a_reserve_call_run_twice_holds_once() {
    // With an active-hold cap of 2 across sales (counted by the reserve
    // script on one Redis, by admit.lua after it on a cluster).
    let app = Spawn::new()
        .await
        .with(|s| s.max_active_holds = 2)
        .start()
        .await;
    let sale = app.sale(5, 2, 60).await;
    let id = flashgate::ids::SaleId::parse(&sale).expect("sale id");
    let user = flashgate::ids::UserId::parse("ann").expect("user");
    let rid = uuid::Uuid::new_v4();
    let gate = &app.service.gate;
    let first = gate
        .reserve(&id, &rid, &user, 2, &[], None)
        .await
        .expect("reserve");
    let again = gate
        .reserve(&id, &rid, &user, 2, &[], None)
        .await
        .expect("again");
    assert_eq!(format!("{first:?}"), format!("{again:?}"));
    assert!(matches!(first, ReserveOutcome::Held { .. }), "{first:?}");
    // The buyer's active holds count it once: one more hold elsewhere fits.
    let other = flashgate::ids::SaleId::parse(&app.sale(5, 2, 60).await).expect("sale id");
    let elsewhere = uuid::Uuid::new_v4();
    let second = gate
        .reserve(&other, &elsewhere, &user, 1, &[], None)
        .await
        .expect("reserve elsewhere");
    assert!(matches!(second, ReserveOutcome::Held { .. }), "{second:?}");
    let v = app.view(&sale).await;
    assert_eq!(
        (v["held"].as_i64(), v["available"].as_i64()),
        (Some(2), Some(3)),
        "{v}"
    );
    // The buyer's cap counts the hold once too.
    assert_eq!(app.reserve(&sale, "ann", 1, None).await.0, 409);
    assert_eq!(
        app.act(&sale, &rid.to_string(), "cancel", Some("ann"))
            .await
            .0,
        200
    );
    assert_eq!(app.view(&sale).await["held"], 0);
}
