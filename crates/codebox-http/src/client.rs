//! The hyper client shared by every remote backend: pooling, timeouts, retries.
