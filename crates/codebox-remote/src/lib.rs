//! RemoteBox: a session on a CodeBox server, driven over HTTP.
