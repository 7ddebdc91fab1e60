//! The live path's warm connections against a real PostgreSQL: reused after
//! success, handed back to the pool otherwise, never more than half the pool idle.

use std::time::Duration;

use aljex_sink::warm::WarmConnections;
use aljex_tests::database_url;
use sqlx::{postgres::PgPoolOptions, PgConnection, PgPool};

async fn pool(max: u32) -> PgPool {
    connect(PgPoolOptions::new().max_connections(max)).await
}

async fn connect(options: PgPoolOptions) -> PgPool {
    options
        .acquire_timeout(Duration::from_secs(60))
        .connect(&database_url())
        .await
        .expect("connect to PostgreSQL")
}

async fn backend_pid(connection: &mut PgConnection) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(connection)
        .await
}

#[tokio::test]
async fn a_kept_connection_is_reused_without_going_back_to_the_pool() {
    let pool = pool(4).await;
    let warm = WarmConnections::new(pool.clone());
    let mut lease = warm.lease().await.unwrap();
    let first = backend_pid(&mut lease).await.unwrap();
    lease.keep();
    assert_eq!(warm.idle_count(), 1);
    assert_eq!(
        pool.num_idle(),
        0,
        "the kept connection stays out of the pool"
    );

    let mut lease = warm.lease().await.unwrap();
    assert_eq!(warm.idle_count(), 0);
    assert_eq!(backend_pid(&mut lease).await.unwrap(), first);
    lease.keep();
}

#[tokio::test]
async fn a_connection_not_kept_goes_back_to_the_pool() {
    let pool = pool(4).await;
    let warm = WarmConnections::new(pool.clone());
    let mut lease = warm.lease().await.unwrap();
    backend_pid(&mut lease).await.unwrap();
    drop(lease);
    assert_eq!(warm.idle_count(), 0);
    wait_for_pool_idle(&pool, 1).await;
}

/// The pool takes connections back after its own check, in a background task.
async fn wait_for_pool_idle(pool: &PgPool, count: usize) {
    for _ in 0..250 {
        if pool.num_idle() == count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{} idle in the pool, expected {count}", pool.num_idle());
}

#[tokio::test]
async fn at_most_half_the_pool_stays_warm() {
    let pool = pool(4).await;
    let warm = WarmConnections::new(pool.clone());
    let mut leases = Vec::new();
    for _ in 0..4 {
        let mut lease = warm.lease().await.unwrap();
        backend_pid(&mut lease).await.unwrap();
        leases.push(lease);
    }
    for lease in leases {
        lease.keep();
    }
    assert_eq!(warm.idle_count(), 2);
    // The other two went back to the pool, where other users find them.
    wait_for_pool_idle(&pool, 2).await;
}

#[tokio::test]
async fn a_broken_warm_connection_fails_once_and_is_replaced() {
    let pool = pool(4).await;
    let admin = self::pool(1).await;
    let warm = WarmConnections::new(pool.clone());
    let mut lease = warm.lease().await.unwrap();
    let broken = backend_pid(&mut lease).await.unwrap();
    lease.keep();
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(broken)
        .execute(&admin)
        .await
        .unwrap();

    let mut lease = warm.lease().await.unwrap();
    assert!(backend_pid(&mut lease).await.is_err());
    drop(lease);
    let mut lease = warm.lease().await.unwrap();
    let fresh = backend_pid(&mut lease).await.unwrap();
    assert_ne!(fresh, broken);
    lease.keep();
}

#[tokio::test]
async fn connections_idle_past_the_pools_idle_timeout_are_swept_back() {
    let pool = connect(
        PgPoolOptions::new()
            .max_connections(4)
            .idle_timeout(Duration::from_millis(200)),
    )
    .await;
    let warm = WarmConnections::new(pool.clone());
    let mut lease = warm.lease().await.unwrap();
    backend_pid(&mut lease).await.unwrap();
    lease.keep();
    warm.sweep();
    assert_eq!(warm.idle_count(), 1, "not idle long enough yet");
    tokio::time::sleep(Duration::from_millis(300)).await;
    warm.sweep();
    assert_eq!(warm.idle_count(), 0);
}

#[tokio::test]
async fn a_warm_connection_past_the_pools_max_lifetime_is_not_reused() {
    let pool = connect(
        PgPoolOptions::new()
            .max_connections(4)
            .max_lifetime(Duration::from_millis(200)),
    )
    .await;
    let warm = WarmConnections::new(pool.clone());
    let mut lease = warm.lease().await.unwrap();
    let old = backend_pid(&mut lease).await.unwrap();
    lease.keep();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut lease = warm.lease().await.unwrap();
    assert_ne!(backend_pid(&mut lease).await.unwrap(), old);
    assert_eq!(warm.idle_count(), 0);
}
