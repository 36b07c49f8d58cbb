//! A few PostgreSQL connections, each with its statements prepared once, used in turn. A closed
//! connection is replaced (and its statements prepared again) on its next use. The accounts store
//! and the match queue each hold one, with their own statements.
//!
//! Never holds a lock across an `.await`, and never retries a query itself: callers bound their
//! queries with [`crate::accounts::bounded`].

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_postgres::Client;

use crate::accounts::{AccountsError, bounded, connect_one};

/// A set of statements prepared on one connection.
pub(crate) trait Prepared: Sized + Send + Sync + 'static {
    fn prepare(client: &Client) -> impl Future<Output = Result<Self, AccountsError>> + Send;
}

/// One connection and its prepared statements.
pub(crate) struct Conn<S> {
    pub client: Client,
    pub st: S,
}

/// The pool: `url`, `schema` (the connections' search path) and the timeout of one operation.
pub(crate) struct PgPool<S> {
    pub url: String,
    pub schema: String,
    pub timeout: Duration,
    conns: Vec<Mutex<Arc<Conn<S>>>>,
    next: AtomicUsize,
}

async fn open<S: Prepared>(url: &str, schema: &str) -> Result<Conn<S>, AccountsError> {
    let client = connect_one(url, schema).await?;
    let st = S::prepare(&client).await?;
    Ok(Conn { client, st })
}

impl<S: Prepared> PgPool<S> {
    /// Opens `connections` (at least one) connections with their statements prepared.
    pub async fn connect(url: &str, schema: &str, connections: usize, timeout: Duration) -> Result<PgPool<S>, AccountsError> {
        let mut conns = Vec::with_capacity(connections.max(1));
        for _ in 0..connections.max(1) {
            conns.push(Mutex::new(Arc::new(bounded("connect", timeout, open(url, schema)).await?)));
        }
        Ok(PgPool {
            url: url.to_string(),
            schema: schema.to_string(),
            timeout,
            conns,
            next: AtomicUsize::new(0),
        })
    }

    /// How many connections the pool holds.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// The next connection, reconnected first when it has closed.
    pub async fn conn(&self) -> Result<Arc<Conn<S>>, AccountsError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        let c = self.conns[i]
            .lock()
            .map(|g| Arc::clone(&g))
            .unwrap_or_else(|p| Arc::clone(&p.into_inner()));
        if !c.client.is_closed() {
            return Ok(c);
        }
        let fresh = Arc::new(bounded("reconnect", self.timeout, open(&self.url, &self.schema)).await?);
        if let Ok(mut g) = self.conns[i].lock() {
            *g = Arc::clone(&fresh);
        }
        Ok(fresh)
    }
}
