//! Integration tests of the CodeBox server: a real server on 127.0.0.1 port 0, driven over
//! real HTTP connections.

mod adversarial;
mod api;
mod bad_input;
mod e2b;
mod e2b_envd;
mod local;
mod nodes;
mod ports;
mod processes;
mod props;
mod quotas;
mod sessions;
mod support;
