#![doc = include_str!("../README.md")]
//!
//! # Crate features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `local` | yes | [`LocalBox`]: Jupyter kernels on this machine |
//! | `remote` | yes | [`RemoteBox`]: sessions on a CodeBox server |
//! | `server` | no | [`server`]: the CodeBox server as a library |
//! | `rustls` | no | TLS for [`RemoteBox`] (`https://` base URLs) through rustls; implies `remote` |
//! | `blocking` | no | [`blocking`]: the same API for code that is not async |
//!
//! Everything in `codebox-core` (the [`CodeBox`] trait, events, results, errors, settings) is
//! re-exported at the top level whatever the features.
#![cfg_attr(docsrs, feature(doc_cfg))]

use std::sync::Arc;

mod env_file;

#[cfg(feature = "blocking")]
#[cfg_attr(docsrs, doc(cfg(feature = "blocking")))]
pub mod blocking;

pub use env_file::settings_from_env_and_file;

#[doc(inline)]
pub use codebox_core::*;

#[cfg(feature = "local")]
#[cfg_attr(docsrs, doc(cfg(feature = "local")))]
#[doc(inline)]
pub use codebox_local::{KernelPool, LocalBox, LocalBoxBuilder, Provision, Template};

/// The local backend's crate, for everything beyond the re-exported names.
#[cfg(feature = "local")]
#[cfg_attr(docsrs, doc(cfg(feature = "local")))]
pub use codebox_local as local;

#[cfg(feature = "remote")]
#[cfg_attr(docsrs, doc(cfg(feature = "remote")))]
#[doc(inline)]
pub use codebox_remote::RemoteBox;

/// Sessions of a CodeBox server: create them with parameters, attach, list.
#[cfg(feature = "remote")]
#[cfg_attr(docsrs, doc(cfg(feature = "remote")))]
#[doc(inline)]
pub use codebox_remote::{Client, SessionFilter, SessionInfo, SessionRequest, SessionState};

/// The remote backend's crate, for everything beyond the re-exported names.
#[cfg(feature = "remote")]
#[cfg_attr(docsrs, doc(cfg(feature = "remote")))]
pub use codebox_remote as remote;

/// The CodeBox server as a library.
#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
pub use codebox_server as server;

/// A box chosen from the environment (`CODEBOX_*` variables, then a `.env` file in the
/// current directory), not yet started.
///
/// No `CODEBOX_API_KEY`, or the key `local`, gives a [`LocalBox`]; any other key gives a
/// [`RemoteBox`] at `CODEBOX_BASE_URL`. The box is made from the template `CODEBOX_TEMPLATE`
/// names when it is set (`python`, `python-ipykernel`, `python-minimal`, `bash`, `javascript`, `typescript`, or
/// one of the server's own): a local box with `CODEBOX_KERNEL` and `CODEBOX_PYTHON` over it,
/// a remote one by asking the server for a session of that template.
pub fn from_env() -> Result<Arc<dyn CodeBox>> {
    let settings = settings_from_env_and_file(".env")?;
    let template = env_file::var_from_env_and_file(".env", TEMPLATE_VAR)?;
    from_settings_and_template(&settings, template.as_deref())
}

/// The variable naming the template of a local box made by [`from_env`].
pub const TEMPLATE_VAR: &str = "CODEBOX_TEMPLATE";

fn from_settings_and_template(settings: &CodeBoxSettings, template: Option<&str>) -> Result<Arc<dyn CodeBox>> {
    match template.filter(|t| !t.is_empty()) {
        None => from_settings(settings),
        Some(template) if settings.wants_local() => local_template_box(settings, template),
        Some(template) => remote_template_box(settings, template),
    }
}

#[cfg(feature = "remote")]
fn remote_template_box(settings: &CodeBoxSettings, template: &str) -> Result<Arc<dyn CodeBox>> {
    Ok(Arc::new(codebox_remote::RemoteBoxBuilder::from_settings(settings).with_template(template).build()?))
}

#[cfg(not(feature = "remote"))]
fn remote_template_box(settings: &CodeBoxSettings, _: &str) -> Result<Arc<dyn CodeBox>> {
    remote_box(settings)
}

#[cfg(feature = "local")]
fn local_template_box(settings: &CodeBoxSettings, template: &str) -> Result<Arc<dyn CodeBox>> {
    Ok(Arc::new(LocalBox::builder().with_template(template).with_settings(settings).build()?))
}

#[cfg(not(feature = "local"))]
fn local_template_box(settings: &CodeBoxSettings, _: &str) -> Result<Arc<dyn CodeBox>> {
    local_box(settings)
}

/// Like [`from_env`], then started: ready to run code.
pub async fn connect() -> Result<Arc<dyn CodeBox>> {
    let b = from_env()?;
    b.start().await?;
    Ok(b)
}

/// A box for these settings, not yet started: local when they ask for it
/// ([`CodeBoxSettings::wants_local`]), remote otherwise.
pub fn from_settings(settings: &CodeBoxSettings) -> Result<Arc<dyn CodeBox>> {
    if settings.wants_local() { local_box(settings) } else { remote_box(settings) }
}

#[cfg(feature = "local")]
fn local_box(settings: &CodeBoxSettings) -> Result<Arc<dyn CodeBox>> {
    Ok(Arc::new(LocalBox::from_settings(settings)?))
}

#[cfg(not(feature = "local"))]
fn local_box(_: &CodeBoxSettings) -> Result<Arc<dyn CodeBox>> {
    Err(CodeBoxError::unsupported(
        "a local box (no CODEBOX_API_KEY is set): build codebox with the `local` feature, or set CODEBOX_API_KEY",
    ))
}

#[cfg(feature = "remote")]
fn remote_box(settings: &CodeBoxSettings) -> Result<Arc<dyn CodeBox>> {
    Ok(Arc::new(RemoteBox::from_settings(settings)?))
}

#[cfg(not(feature = "remote"))]
fn remote_box(_: &CodeBoxSettings) -> Result<Arc<dyn CodeBox>> {
    Err(CodeBoxError::unsupported(
        "a remote box (CODEBOX_API_KEY is set): build codebox with the `remote` feature, or unset CODEBOX_API_KEY",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(key: Option<&str>) -> CodeBoxSettings {
        let key = key.map(str::to_owned);
        CodeBoxSettings::from_lookup(move |name| match name {
            "CODEBOX_API_KEY" => key.clone(),
            "CODEBOX_BASE_URL" => Some("http://127.0.0.1:9".into()),
            _ => None,
        })
        .unwrap()
    }

    #[cfg(feature = "local")]
    #[test]
    fn no_key_or_the_local_key_gives_a_local_box() {
        for key in [None, Some("local")] {
            let b = from_settings(&settings(key)).unwrap();
            assert!(format!("{b:?}").starts_with("LocalBox"), "{b:?}");
        }
    }

    #[cfg(feature = "local")]
    #[test]
    fn a_template_names_the_local_box_and_an_unknown_one_is_refused() {
        let b = from_settings_and_template(&settings(None), Some("bash")).unwrap();
        assert!(b.capabilities().languages.contains(&"bash".to_owned()), "{b:?}");
        let err = from_settings_and_template(&settings(None), Some("cobol")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.to_string().contains("python, python-ipykernel, python-minimal, bash"), "{err}");
        assert!(from_settings_and_template(&settings(None), Some("")).is_ok(), "empty: no template");
    }

    #[cfg(feature = "local")]
    #[tokio::test]
    async fn the_templates_box_runs_its_language() {
        let b = from_settings_and_template(&settings(None), Some("bash")).unwrap();
        b.start().await.unwrap();
        let out = b.exec("echo \"$0\"").await.unwrap();
        b.stop().await.unwrap();
        assert_eq!(out.stdout(), "bash\n", "cells that name no language run in bash");
    }

    #[cfg(feature = "remote")]
    #[test]
    fn a_template_with_a_remote_key_asks_the_server_for_it() {
        let b = from_settings_and_template(&settings(Some("sk-x")), Some("bash")).unwrap();
        let dbg = format!("{b:?}");
        assert!(dbg.starts_with("RemoteBox"), "{dbg}");
    }

    #[cfg(feature = "remote")]
    #[test]
    fn any_other_key_gives_a_remote_box_without_leaking_the_key() {
        let b = from_settings(&settings(Some("sk-facade-secret"))).unwrap();
        let dbg = format!("{b:?}");
        assert!(dbg.starts_with("RemoteBox"), "{dbg}");
        assert!(!dbg.contains("sk-facade-secret"), "{dbg}");
    }

    #[cfg(not(feature = "local"))]
    #[test]
    fn without_the_local_feature_a_local_box_is_a_clear_error() {
        let err = from_settings(&settings(None)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(err.to_string().contains("`local` feature"), "{err}");
    }

    #[cfg(not(feature = "remote"))]
    #[test]
    fn without_the_remote_feature_a_remote_box_is_a_clear_error() {
        let err = from_settings(&settings(Some("sk-x"))).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
    }
}
