//! Connections the live path keeps checked out of the pool between changes.
//!
//! sqlx pings every connection it takes back into the pool (one more round
//! trip to PostgreSQL per change, measured at 5-10% of the live throughput at
//! concurrency 16; see BENCHMARKS.md). The live path instead returns a
//! connection that just committed a change to a small stack of its own, and
//! takes the next one from there. A connection whose last use failed, or was
//! cancelled, goes back to the pool, whose ping closes it if it is broken.
//! The stack keeps at most half the pool idle, so ingestion, rejections and
//! the health check always find connections in the pool, and it honours the
//! pool's idle timeout ([`WarmConnections::sweep`]) and maximum lifetime.

use std::{
    ops::{Deref, DerefMut},
    sync::{Mutex, MutexGuard},
    time::Instant,
};

use sqlx::{pool::PoolConnection, PgConnection, PgPool, Postgres};

/// The pool and the live path's idle connections taken from it.
#[derive(Debug)]
pub struct WarmConnections {
    pool: PgPool,
    idle: Mutex<Vec<Warm>>,
    capacity: usize,
}

/// An idle connection on the stack.
#[derive(Debug)]
struct Warm {
    connection: PoolConnection<Postgres>,
    /// When it was taken from the pool (the connection is at least that old).
    taken: Instant,
    /// When it was last put on the stack.
    parked: Instant,
}

impl WarmConnections {
    /// Keeps at most half of `pool`'s maximum size idle.
    pub fn new(pool: PgPool) -> Self {
        let capacity = pool.options().get_max_connections() as usize / 2;
        WarmConnections {
            pool,
            idle: Mutex::new(Vec::with_capacity(capacity)),
            capacity,
        }
    }

    /// A connection: the most recently used warm one, else one from the pool.
    pub async fn lease(&self) -> Result<Lease<'_>, sqlx::Error> {
        let max_lifetime = self.pool.options().get_max_lifetime();
        let warm = loop {
            let next = self.idle().pop();
            match next {
                // Past the pool's lifetime: the pool closes it when it gets it back.
                Some(warm) if max_lifetime.is_some_and(|max| warm.taken.elapsed() > max) => {}
                other => break other,
            }
        };
        let (connection, taken) = match warm {
            Some(warm) => (warm.connection, warm.taken),
            None => (self.pool.acquire().await?, Instant::now()),
        };
        Ok(Lease {
            connection: Some(connection),
            taken,
            home: self,
            healthy: false,
        })
    }

    /// Hands back to the pool the connections idle here for longer than the
    /// pool's idle timeout (the pool then applies its own rules). Call it
    /// now and then: without changes nothing else takes them off the stack.
    pub fn sweep(&self) {
        let Some(idle_timeout) = self.pool.options().get_idle_timeout() else {
            return;
        };
        let stale: Vec<Warm> = {
            let mut idle = self.idle();
            let (stale, fresh) = idle
                .drain(..)
                .partition(|warm: &Warm| warm.parked.elapsed() > idle_timeout);
            *idle = fresh;
            stale
        };
        drop(stale);
    }

    /// Hands every idle connection back to the pool (before closing it).
    pub fn clear(&self) {
        let all: Vec<Warm> = self.idle().drain(..).collect();
        drop(all);
    }

    /// Idle connections held here (they count as in use in the pool's figures).
    pub fn idle_count(&self) -> usize {
        self.idle().len()
    }

    fn idle(&self) -> MutexGuard<'_, Vec<Warm>> {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One connection in use by the live path. Returns to the warm stack only
/// after [`Lease::keep`]; otherwise (error, cancellation) to the pool.
#[derive(Debug)]
pub struct Lease<'a> {
    connection: Option<PoolConnection<Postgres>>,
    taken: Instant,
    home: &'a WarmConnections,
    healthy: bool,
}

impl Lease<'_> {
    /// Marks the connection as fit for the next change (its last use succeeded).
    pub fn keep(mut self) {
        self.healthy = true;
    }
}

impl Deref for Lease<'_> {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        match &self.connection {
            Some(connection) => connection,
            None => unreachable!("a lease holds its connection until dropped"),
        }
    }
}

impl DerefMut for Lease<'_> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        match &mut self.connection {
            Some(connection) => connection,
            None => unreachable!("a lease holds its connection until dropped"),
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let Some(connection) = self.connection.take() else {
            return;
        };
        if self.healthy {
            let mut idle = self.home.idle();
            if idle.len() < self.home.capacity {
                idle.push(Warm {
                    connection,
                    taken: self.taken,
                    parked: Instant::now(),
                });
                return;
            }
        }
        // Back to the pool: sqlx checks it there.
        drop(connection);
    }
}
