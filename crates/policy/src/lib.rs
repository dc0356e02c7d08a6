//! Access-policy grants compiled into an immutable snapshot, and a pure evaluate function.
