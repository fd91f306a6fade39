//! HTTP plumbing shared by the CodeBox client (`codebox-remote`) and server
//! (`codebox-server`), and the wire types of the native API described in
//! `docs/native-api.md`.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod wire;
