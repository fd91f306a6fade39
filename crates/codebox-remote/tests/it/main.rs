//! Integration tests for RemoteBox.
