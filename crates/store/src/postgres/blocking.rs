//! One blocking connection of its own (leases, counters): a private client
//! runtime, connected on first use, dropped after a lost round trip.

use tokio::runtime::Runtime;
use tokio_postgres::Client;

use super::{PgOptions, connect, pg_error, runtime};
use crate::StoreError;

/// A connection used from one thread, blocking it for each round trip.
pub(super) struct Blocking {
    options: PgOptions,
    rt: Runtime,
    client: Option<Client>,
}

impl std::fmt::Debug for Blocking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blocking")
            .field("options", &self.options)
            .field("connected", &self.client.is_some())
            .finish_non_exhaustive()
    }
}

impl Blocking {
    pub(super) fn new(options: PgOptions) -> Result<Self, StoreError> {
        Ok(Blocking {
            options,
            rt: runtime()?,
            client: None,
        })
    }

    /// Runs `op` within the deadline, connecting first if needed; a lost
    /// connection or a missed deadline answers [`StoreError::Unavailable`] and
    /// the next call connects again.
    pub(super) fn run<T>(
        &mut self,
        op: impl AsyncFnOnce(&mut Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, StoreError> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
        let timeout = self.options.timeout;
        let options = &self.options;
        let slot = &mut self.client;
        let result = self.rt.block_on(async {
            if slot.is_none() {
                *slot = Some(connect(options).await?);
            }
            let Some(client) = slot.as_mut() else {
                return Err(StoreError::Unavailable("not connected".to_owned()));
            };
            match tokio::time::timeout(timeout, op(client)).await {
                Ok(r) => r.map_err(|e| pg_error(&e)),
                Err(_) => Err(StoreError::Unavailable(format!(
                    "no answer within {timeout:?}"
                ))),
            }
        });
        if matches!(result, Err(StoreError::Unavailable(_))) {
            self.client = None;
        }
        result
    }
}
