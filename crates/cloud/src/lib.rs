//! The Cloud: axum HTTP API for integrators and admins, WebSocket endpoint for Links.
