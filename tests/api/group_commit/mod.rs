//! Group commit of the confirm path (README, Durability): confirms of any
//! sales committed together, each answered only after its batch committed,
//! exactly once whatever happens to the batch, the process or Postgres.
//!
//! - here: batches (many sales in one, a bad row among them, the same
//!   reservation twice) and hundreds of concurrent confirms, exact counts;
//! - `faults.rs`: the process killed between a batch's commit and its
//!   answers, Postgres cut mid-batch, a confirm timing out while its batch
//!   commits;
//! - `plans.rs`: the writers read `orders` only by index.

mod faults;
mod plans;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use sqlx::PgPool;

use crate::support::*;

/// A reserved unit: sale, buyer, reservation id.
#[derive(Clone, Debug)]
struct Hold {
    sale: String,
    user: String,
    rid: String,
}

/// One hold per buyer `{tag}-{i}` of `sale`, `n` of them.
async fn holds(app: &TestApp, sale: &str, tag: &str, n: usize) -> Vec<Hold> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let user = format!("{tag}-{i}");
        let (s, v) = app.reserve(sale, &user, 1, None).await;
        assert_eq!(s, 201, "reserve {user}: {v}");
        out.push(Hold {
            sale: sale.to_string(),
            user,
            rid: rid(&v),
        });
    }
    out
}

/// Confirms every hold at once; the status each got.
async fn confirm_all(app: &Arc<TestApp>, holds: &[Hold]) -> Vec<(Hold, u16)> {
    join_all(holds.iter().cloned().map(|h| {
        let app = app.clone();
        tokio::spawn(async move {
            let (s, _) = body(
                confirm_req(&app, &h.sale, &h.rid, &h.user)
                    .send()
                    .await
                    .expect("confirm"),
            )
            .await;
            (h, s)
        })
    }))
    .await
    .into_iter()
    .map(|r| r.expect("confirm task"))
    .collect()
}

/// Postgres holds exactly these holds as orders of their sales (one row
/// each, none other), and each sale's sold_count and user_purchases are
/// their sums.
async fn assert_recorded(pool: &PgPool, sales: &[String], confirmed: &[Hold]) {
    for sale in sales {
        let mine: Vec<&Hold> = confirmed.iter().filter(|h| &h.sale == sale).collect();
        let rows: BTreeSet<String> = orders(pool, sale).await.into_keys().collect();
        let want: BTreeSet<String> = mine.iter().map(|h| h.rid.clone()).collect();
        assert_eq!(
            rows, want,
            "sale {sale}: one order row per confirm, none other"
        );
        let mut per_user: BTreeMap<String, i64> = BTreeMap::new();
        for h in &mine {
            *per_user.entry(h.user.clone()).or_default() += 1;
        }
        assert_eq!(user_purchases(pool, sale).await, per_user, "sale {sale}");
        assert_eq!(
            sold_count(pool, sale).await,
            mine.len() as i64,
            "sale {sale}"
        );
    }
}

/// An app of `spawn` whose confirms all go through one group-commit writer
/// (so a batch held on a row holds every confirm behind it), answering
/// within `confirm_timeout`; no write-behind worker.
async fn one_writer(spawn: Spawn, confirm_timeout: Duration) -> TestApp {
    spawn
        .no_worker()
        .with(|s| {
            s.confirm_writers = 1;
            s.confirm_timeout = confirm_timeout;
        })
        .start()
        .await
}

/// The confirm batches this process committed: (transactions, confirms).
/// nextest runs each test in a process of its own, so these are this
/// test's.
async fn batches(app: &TestApp) -> (u64, u64) {
    let text = app.metrics().await;
    let value = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .map_or(0, |v| v.trim().parse::<f64>().expect("number") as u64)
    };
    (
        value("flashgate_confirm_batch_size_count"),
        value("flashgate_confirm_batch_size_sum"),
    )
}

/// A transaction of the test that holds `sale`'s row: the confirm writer's
/// next batch that touches the sale waits for it (its first lock), so the
/// confirms sent meanwhile queue up behind it. Released on commit.
async fn hold_sale_row(pool: &PgPool, sale: &str) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM sales WHERE sale_id = $1 FOR UPDATE")
        .bind(sale)
        .execute(&mut *tx)
        .await
        .expect("lock the sale's row");
    tx
}

/// Waits until a session of this database waits for a lock (the writer's
/// batch, blocked on the row the test holds).
async fn until_a_writer_waits(pool: &PgPool) {
    for _ in 0..500 {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(pool)
        .await
        .expect("pg_stat_activity");
        if n > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no writer ever waited for the sale's row");
}

/// Waits until Redis says every hold is confirmed: each confirm's script
/// ran, so it is queued for the writer (or answered).
async fn until_confirmed_in_redis(app: &TestApp, holds: &[Hold]) {
    for h in holds {
        for attempt in 0.. {
            let (s, v) = app.get_reservation(&h.sale, &h.rid, None).await;
            if s == 200 && v["status"] == "confirmed" {
                break;
            }
            assert!(attempt < 500, "{} never confirmed in Redis: {v}", h.rid);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `first` confirmed while the test holds `sale`'s row (the writer's batch
/// waits on it), then `queued`; once Redis ran all their scripts, each
/// confirm is queued for the writer, and the row is released. The answers,
/// `first`'s then `queued`'s.
async fn confirm_behind_the_row(
    app: &Arc<TestApp>,
    sale: &str,
    first: Vec<Hold>,
    queued: &[Hold],
) -> Vec<(Hold, u16)> {
    let lock = hold_sale_row(&app.pool, sale).await;
    let blocked = {
        let app = app.clone();
        tokio::spawn(async move { confirm_all(&app, &first).await })
    };
    until_a_writer_waits(&app.pool).await;
    let rest = {
        let (app, queued) = (app.clone(), queued.to_vec());
        tokio::spawn(async move { confirm_all(&app, &queued).await })
    };
    until_confirmed_in_redis(app, queued).await;
    // Each confirm is queued (or about to be) for the one writer, which
    // still waits for the row.
    tokio::time::sleep(Duration::from_millis(200)).await;
    lock.commit().await.expect("release the row");
    let mut answers = blocked.await.expect("first");
    answers.extend(rest.await.expect("rest"));
    answers
}

/// One writer, its first batch held on a sale's row while confirms of
/// five sales queue behind it: the next transaction commits them all
/// (many sales in one batch, each sale's counters advanced once by the
/// batch's sum), every confirm answers 200 once committed, and Postgres
/// has exactly one row per confirm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_batch_commits_confirms_of_many_sales() {
    let app = Arc::new(one_writer(Spawn::new().await, Duration::from_secs(20)).await);
    let mut sales = Vec::new();
    for _ in 0..5 {
        sales.push(app.sale(100, 1, 300).await);
    }
    let first = holds(&app, &sales[0], "first", 1).await;
    let mut queued = Vec::new();
    for (i, sale) in sales.iter().enumerate() {
        queued.extend(holds(&app, sale, &format!("b{i}"), 40).await);
    }
    let mut confirmed = Vec::new();
    for (h, s) in confirm_behind_the_row(&app, &sales[0], first, &queued).await {
        assert_eq!(s, 200, "confirm {} of {}", h.rid, h.sale);
        confirmed.push(h);
    }
    assert_recorded(&app.pool, &sales, &confirmed).await;
    let (transactions, rows) = batches(&app).await;
    eprintln!(
        "{} confirms in {transactions} transactions",
        confirmed.len()
    );
    assert_eq!(rows, confirmed.len() as u64, "each confirm written once");
    assert!(
        transactions <= 10,
        "{} confirms queued behind one writer took {transactions} transactions",
        confirmed.len()
    );
}

/// A row Postgres refuses (a trigger of the test rejects one buyer's
/// order) in a batch of 60: the batch is split until the bad row stands
/// alone; its confirm answers 503, its 59 neighbours 200, and Postgres has
/// exactly their rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_row_does_not_fail_its_neighbours() {
    let app = Arc::new(one_writer(Spawn::new().await, Duration::from_secs(20)).await);
    refuse_poison_rows(&app.pool, "orders").await;
    let sale = app.sale(100, 1, 300).await;
    let first = holds(&app, &sale, "first", 1).await;
    let mut queued = holds(&app, &sale, "good", 59).await;
    let (s, v) = app.reserve(&sale, "poison", 1, None).await;
    assert_eq!(s, 201, "{v}");
    let poison = Hold {
        sale: sale.clone(),
        user: "poison".into(),
        rid: rid(&v),
    };
    queued.insert(30, poison.clone());

    let mut confirmed = Vec::new();
    for (h, s) in confirm_behind_the_row(&app, &sale, first, &queued).await {
        if h.rid == poison.rid {
            assert_eq!(s, 503, "the bad row is not durable");
        } else {
            assert_eq!(s, 200, "confirm {} next to the bad row", h.rid);
            confirmed.push(h);
        }
    }
    assert_eq!(confirmed.len(), 60);
    assert_recorded(&app.pool, std::slice::from_ref(&sale), &confirmed).await;
    // Every attempt counts its rows: 61 if each confirm had gone alone,
    // more once the bad row was offered with its neighbours, then split.
    let (_, offered) = batches(&app).await;
    assert!(
        offered > 61,
        "the bad row was never batched with its neighbours ({offered} rows offered)"
    );
}

/// Hundreds of buyers of three sales confirm at once, each reservation
/// twice at the same instant (in one batch or two): every confirm answers
/// 200, and Postgres has one order per reservation, each buyer's total and
/// each sale's sold_count exact, also once the write-behind went over the
/// same events. Four writers (the default is one): batches of the same
/// sales commit side by side, and take the sales' rows in one order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_concurrent_confirms_twice_each_are_counted_exactly() {
    let app = Arc::new(
        Spawn::new()
            .await
            .with(|s| s.confirm_writers = 4)
            .start()
            .await,
    );
    let mut sales = Vec::new();
    let mut all = Vec::new();
    for i in 0..3 {
        let sale = app.sale(200, 2, 300).await;
        all.extend(holds(&app, &sale, &format!("s{i}"), 120).await);
        // Buyers with two units of the sale (user_purchases sums them).
        for j in 0..20 {
            let user = format!("s{i}-{j}");
            let (s, v) = app.reserve(&sale, &user, 1, None).await;
            assert_eq!(s, 201, "{v}");
            all.push(Hold {
                sale: sale.clone(),
                user,
                rid: rid(&v),
            });
        }
        sales.push(sale);
    }
    let twice: Vec<Hold> = all.iter().chain(all.iter()).cloned().collect();
    for (h, s) in confirm_all(&app, &twice).await {
        assert_eq!(s, 200, "confirm {} of {} by {}", h.rid, h.sale, h.user);
    }
    assert_recorded(&app.pool, &sales, &all).await;
    app.drained(Duration::from_secs(30)).await;
    assert_recorded(&app.pool, &sales, &all).await;
    let (transactions, rows) = batches(&app).await;
    eprintln!(
        "{} confirms in {transactions} transactions ({rows} rows offered)",
        twice.len()
    );
}

/// The write-behind does not redo the confirm path's work: a trigger of
/// the test counts every row offered to `orders` (a BEFORE INSERT trigger
/// fires even for a row ON CONFLICT then skips). 150 confirms answered
/// 200 with no worker running; then a worker drains their `confirmed`
/// events: still 150 rows offered, none again by the worker, which wrote
/// each event's `stock_movements` row. (A worker that reads a `confirmed`
/// event before its batch committed writes the order too, once: see
/// README, Durability.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_behind_does_not_write_committed_orders_again() {
    let spawn = Spawn::new().await.no_worker();
    let (url, prefix) = (spawn.database_url(), spawn.settings.key_prefix.clone());
    let app = Arc::new(spawn.start().await);
    for sql in [
        "CREATE TABLE offered (n bigint NOT NULL)",
        "INSERT INTO offered VALUES (0)",
        "CREATE FUNCTION count_offered() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN UPDATE offered SET n = n + 1; RETURN NEW; END $$",
        "CREATE TRIGGER count_offered BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION count_offered()",
    ] {
        sqlx::query(sql).execute(&app.pool).await.expect("trigger");
    }
    let sale = app.sale(500, 1, 300).await;
    let all = holds(&app, &sale, "once", 150).await;
    for (h, s) in confirm_all(&app, &all).await {
        assert_eq!(s, 200, "confirm {}", h.rid);
    }
    let offered = || async {
        let (n,): (i64,) = sqlx::query_as("SELECT n FROM offered")
            .fetch_one(&app.pool)
            .await
            .expect("offered");
        n
    };
    assert_eq!(
        offered().await,
        150,
        "each order offered once, by the confirm path"
    );

    let worker = Spawn::shared(&url, &prefix).start().await;
    worker.drained(Duration::from_secs(30)).await;
    assert_eq!(
        offered().await,
        150,
        "the worker offered no committed order again"
    );
    let (movements,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM stock_movements WHERE sale_id = $1 AND kind = 'confirmed'",
    )
    .bind(&sale)
    .fetch_one(&app.pool)
    .await
    .expect("movements");
    assert_eq!(movements, 150, "every confirmed event in the audit trail");
    assert_recorded(&app.pool, std::slice::from_ref(&sale), &all).await;
}

/// The epoch fence, row by row in one batch: an order of the sale's current
/// epoch is recorded; one of a left epoch is refused as stale, unless it
/// was recorded already (then it is no news, and not stale). The stale
/// check reads `orders` only for the rows the fence left out.
#[tokio::test]
async fn a_batch_records_the_current_epoch_and_refuses_a_left_one_as_stale() {
    let app = spawn_app().await;
    let sale = app.sale(10, 5, 60).await;
    sqlx::query("UPDATE sales SET epoch = 3 WHERE sale_id = $1")
        .bind(&sale)
        .execute(&app.pool)
        .await
        .expect("move the sale to epoch 3");
    let order = |user: &str, epoch: i64| flashgate::domain::Order {
        reservation_id: uuid::Uuid::new_v4(),
        sale_id: sale.clone(),
        user_id: user.to_string(),
        quantity: 1,
        confirmed_at: chrono::Utc::now(),
        epoch,
        items: Vec::new(),
    };
    let limit = Duration::from_secs(5);
    let known = order("kim", 2);
    sqlx::query(
        "INSERT INTO orders (reservation_id, sale_id, user_id, quantity, confirmed_at) VALUES ($1, $2, 'kim', 1, now())",
    )
    .bind(known.reservation_id)
    .bind(&sale)
    .execute(&app.pool)
    .await
    .expect("kim's order, recorded before the epoch moved");
    let (now, old) = (order("ann", 3), order("bob", 2));
    let r = app
        .service
        .store
        .record_orders(&[now.clone(), old.clone(), known.clone()], limit)
        .await
        .expect("the batch");
    assert_eq!(r.inserted, 1, "only the current epoch's order is new");
    assert_eq!(
        r.stale,
        vec![old.reservation_id],
        "bob's, of a left epoch, is stale"
    );
    let users: Vec<String> =
        sqlx::query_scalar("SELECT user_id FROM orders WHERE sale_id = $1 ORDER BY user_id")
            .bind(&sale)
            .fetch_all(&app.pool)
            .await
            .expect("orders");
    assert_eq!(users, ["ann", "kim"]);
    let sold: i64 = sqlx::query_scalar("SELECT sold_count FROM sales WHERE sale_id = $1")
        .bind(&sale)
        .fetch_one(&app.pool)
        .await
        .expect("sold_count");
    assert_eq!(sold, 1, "sold_count moved by the inserted order alone");
}
