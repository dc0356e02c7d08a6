//! Writes to the durable state from async handlers.

use crate::app::App;
use crate::error::ApiError;
use crate::state::CloudState;

impl App {
    /// Runs `write` against the state on a blocking thread (every write appends to
    /// the durable log and fsyncs, which must not stall the async workers) and
    /// returns what it returned. A write that panicked is a 500.
    ///
    /// # Errors
    /// [`ApiError::internal`] if the blocking task did not complete.
    pub async fn write<T, F>(self: &std::sync::Arc<Self>, write: F) -> Result<T, ApiError>
    where
        F: FnOnce(&CloudState) -> T + Send + 'static,
        T: Send + 'static,
    {
        let app = std::sync::Arc::clone(self);
        tokio::task::spawn_blocking(move || write(&app.state))
            .await
            .map_err(|e| ApiError::internal(&e))
    }
}
