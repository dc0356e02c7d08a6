//! The tenancy model of Halo Connect as a deterministic state machine over serde events.
