//! The hyper server plumbing: listening with TCP_NODELAY, bodies, NDJSON streaming.
