//! Hostile-tenant cases: sandbox.

#[allow(unused_imports)]
use super::*;
