//! Lock-free query router: resolves sites, checks authority and policy, dispatches to Link sessions.
