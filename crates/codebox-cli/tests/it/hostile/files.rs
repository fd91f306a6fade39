//! Hostile-tenant cases: files.

#[allow(unused_imports)]
use super::*;
