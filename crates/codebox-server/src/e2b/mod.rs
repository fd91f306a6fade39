//! E2B's wire protocol on the same sessions: the control plane (`/sandboxes…`), the code
//! interpreter (`/execute`, `/contexts`, port 49999 traffic) and envd (files, filesystem and
//! process Connect RPC, port 49983 traffic), so that the unmodified E2B SDK talks to
//! `codebox serve`. The protocol as the SDK speaks it is described in `docs/e2b.md`.

// Reached from the service once sandbox traffic is routed here.
#![allow(dead_code)]

pub(crate) mod envd;
pub(crate) mod paths;
