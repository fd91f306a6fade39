//! Hostile-tenant cases: tools.

#[allow(unused_imports)]
use super::*;
