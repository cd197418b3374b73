//! One node away (stalled) while the others serve: the buyer's
//! active-hold count, the sales index.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::json;

use crate::support::cluster::*;
use crate::support::*;

/// Issue 12.6a: the active-hold cap lives on the buyer's own slot. While
/// that slot's primary stalled, holds on sales elsewhere were granted and
/// never counted (17 held, 10 counted). Now a hold that cannot be counted
/// is given back and answered 503: every hold a buyer gets is counted, and
/// the buyer never has more than the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Redis Cluster (FLASHGATE_TEST_REDIS_CLUSTER=1)"]
async fn a_stalled_buyer_slot_never_lets_a_hold_past_the_cap() {
    require_cluster();
    let cluster = OwnCluster::start(false).await;
    cluster
        .config_set("cluster-require-full-coverage", "no")
        .await;
    let app = Arc::new(
        Spawn::new()
            .await
            .redis(&cluster.seeds, true)
            .with(|s| {
                s.redis_timeout = Duration::from_millis(300);
                s.rate.per_user_per_sec = 0;
                s.max_active_holds = 10;
            })
            .start()
            .await,
    );
    let buyer = "capuser3";
    let active = format!("{}:{{u:{buyer}}}:active", app.prefix);
    let nodes = cluster.nodes().await;
    let p = primary_of(&nodes, &active).await;
    let others: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.primary && !n.slots.is_empty() && n.addr != p.addr)
        .collect();
    let mut sales = Vec::new();
    for i in 0..30 {
        let id = sale_id_on(others[i % others.len()], &app.prefix).await;
        let (s, v) = app
            .put_sale(
                &id,
                json!({"stock": 5, "per_user_limit": 1, "hold_ttl_secs": 120}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        sales.push(id);
    }

    let reserve_all = |sales: Vec<String>| {
        let app = app.clone();
        join_all(sales.into_iter().map(move |sale| {
            let app = app.clone();
            async move {
                let (s, v) = app.reserve(&sale, buyer, 1, None).await;
                (sale, s, v)
            }
        }))
    };
    cluster.signal(p.port(), "-STOP");
    let during = reserve_all(sales[..15].to_vec()).await;
    tokio::time::sleep(Duration::from_millis(1600)).await;
    cluster.signal(p.port(), "-CONT");
    let after = reserve_all(sales[15..].to_vec()).await;

    let mut granted = Vec::new();
    for (sale, s, v) in during.iter().chain(after.iter()) {
        match s {
            201 => granted.push((sale.clone(), rid(v))),
            503 => assert_eq!(error_code(v), "unavailable", "{v}"),
            429 => assert_eq!(error_code(v), "rate_limited", "{v}"),
            _ => panic!("{sale}: unexpected {s} {v}"),
        }
    }
    // Every hold the buyer got is held and counted; no more than the cap.
    // (A count that landed after its hold was given back may linger until
    // its deadline: counted ≥ held, the safe side.)
    let mut c = node_conn(&p.url()).await;
    let mut held = 0;
    for (sale, r) in &granted {
        let (s, v) = app.get_reservation(sale, r, Some(buyer)).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["status"], "held", "{v}");
        held += 1;
        let score: Option<f64> = redis::cmd("ZSCORE")
            .arg(&active)
            .arg(format!("{sale}|{r}"))
            .query_async(&mut c)
            .await
            .expect("zscore");
        assert!(score.is_some(), "the hold {sale}/{r} is not counted");
    }
    let counted: i64 = redis::cmd("ZCARD")
        .arg(&active)
        .query_async(&mut c)
        .await
        .expect("zcard");
    println!(
        "stalled buyer slot: {} granted during the stall, {} after; {held} held, {counted} counted",
        during.iter().filter(|(_, s, _)| *s == 201).count(),
        after.iter().filter(|(_, s, _)| *s == 201).count()
    );
    assert!(i64::from(held) <= counted, "{held} held, {counted} counted");
    assert!(held <= 10, "{held} holds past the cap of 10");
    // Every sale counts exactly what it granted (given-back holds too).
    for sale in &sales {
        let got = granted.iter().filter(|(s, _)| s == sale).count();
        let v = app.view(sale).await;
        assert_eq!(
            v["held"].as_i64(),
            Some(i64::try_from(got).expect("n")),
            "{sale}: {v}"
        );
    }
}

/// Issue 12.6b: while the node holding the sales index is away, the sales
/// on the other nodes keep their write-behind and their sweeper, a sale can
/// still be created there, `GET /v1/sales` answers (naming what it cannot
/// read), and `/readyz` says what cannot run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Redis Cluster (FLASHGATE_TEST_REDIS_CLUSTER=1)"]
async fn the_sales_index_node_away_stops_no_other_sale() {
    require_cluster();
    let cluster = OwnCluster::start(false).await;
    cluster
        .config_set("cluster-require-full-coverage", "no")
        .await;
    let app = Spawn::new()
        .await
        .redis(&cluster.seeds, true)
        .with(|s| {
            s.redis_timeout = Duration::from_millis(300);
            s.rate.per_user_per_sec = 0;
            // A buyer's cap lives on the buyer's own slot, maybe the frozen
            // node's (that case is the test above).
            s.max_active_holds = 0;
            s.stall_after = Duration::from_secs(1);
        })
        .start()
        .await;
    let nodes = cluster.nodes().await;
    let index = primary_of(&nodes, &format!("{}:sales", app.prefix)).await;
    let live = nodes
        .iter()
        .find(|n| n.primary && !n.slots.is_empty() && n.addr != index.addr)
        .expect("another primary")
        .clone();
    let healthy = sale_id_on(&live, &app.prefix).await;
    let (s, v) = app
        .put_sale(
            &healthy,
            json!({"stock": 10, "per_user_limit": 2, "hold_ttl_secs": 60}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let expiring = sale_id_on(&live, &app.prefix).await;
    let (s, v) = app
        .put_sale(
            &expiring,
            json!({"stock": 10, "per_user_limit": 2, "hold_ttl_secs": 2}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let frozen = sale_id_on(&index, &app.prefix).await;
    let (s, v) = app
        .put_sale(&frozen, json!({"stock": 10, "per_user_limit": 2}))
        .await;
    assert_eq!(s, 201, "{v}");
    readyz_until(&app, Duration::from_secs(10), |s, v| {
        s == 200 && v["status"] == "ready"
    })
    .await;

    cluster.signal(index.port(), "-STOP");
    let stopped = tokio::time::Instant::now();
    // (A failed assertion leaves the node stopped: the cluster's drop kills it.)
    {
        // A hold nobody touches again: only the sweeper can give it back.
        let (s, v) = app.reserve(&expiring, "eve", 1, None).await;
        assert_eq!(s, 201, "{v}");
        let expiring_rid = rid(&v);
        // A sale on a live node can be created.
        let created = sale_id_on(&live, &app.prefix).await;
        let (s, v) = app
            .put_sale(&created, json!({"stock": 5, "per_user_limit": 1}))
            .await;
        assert_eq!(s, 201, "a sale on a live node while the index is away: {v}");
        // Confirms on live nodes reach Postgres through the write-behind.
        let mut confirmed = Vec::new();
        for (sale, user) in [(&healthy, "ann"), (&healthy, "bob"), (&created, "cid")] {
            let (s, v) = app.reserve(sale, user, 1, None).await;
            assert_eq!(s, 201, "{v}");
            assert_eq!(app.act(sale, &rid(&v), "confirm", Some(user)).await.0, 200);
            confirmed.push(rid(&v));
        }
        // The listing answers, naming the sale it cannot read.
        let (s, v) = app.list_sales().await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["unavailable"], json!([frozen]), "{v}");
        let listed: Vec<&str> = v["sales"]
            .as_array()
            .expect("sales")
            .iter()
            .filter_map(|s| s["sale_id"].as_str())
            .collect();
        for id in [&healthy, &expiring, &created] {
            assert!(listed.contains(&id.as_str()), "{id} in {v}");
        }
        // Readiness says what cannot run.
        let r = readyz_until(&app, Duration::from_secs(10), |s, v| {
            s == 200 && v["status"] == "degraded"
        })
        .await;
        assert!(r["reasons"].to_string().contains("sales index"), "{r}");

        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let written: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM stock_movements WHERE kind = 'confirmed' AND reservation_id::text = ANY($1)",
            )
            .bind(&confirmed)
            .fetch_one(&app.pool)
            .await
            .expect("movements");
            let expired: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM stock_movements WHERE kind = 'expired' AND reservation_id = $1::uuid",
            )
            .bind(&expiring_rid)
            .fetch_one(&app.pool)
            .await
            .expect("expired");
            if written == 3 && expired == 1 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "while the index node is away: {written} of 3 confirms written, expired hold swept: {expired}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!(
            "index node away: live sales served and written within {:?}",
            stopped.elapsed()
        );
    }
    cluster.signal(index.port(), "-CONT");
    readyz_until(&app, Duration::from_secs(20), |s, v| {
        s == 200 && v["status"] == "ready"
    })
    .await;
}
