//! The CodeBox HTTP server as a library: it serves sessions, each backed by a box from a
//! factory, and knows only the `CodeBox` trait.
