//! The Link agent: serves local PMS databases to the Cloud over WebSocket.
