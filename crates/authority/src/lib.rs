//! Authority election for groups of sites sharing one PMS ID: a pure function over a group and an event.
