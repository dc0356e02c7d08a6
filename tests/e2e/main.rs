//! End-to-end scenarios: a real Cloud on loopback HTTP, real Links over WebSocket,
//! real SQLite databases. One module per area; fixtures in `fixture.rs`.

mod fixture;
mod flow;
mod failures;
mod tenancy;
