//! The connector: TCP with `TCP_NODELAY`, optional rustls, and one deadline for the whole
//! connection setup (DNS, TCP and TLS).

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;

#[cfg(feature = "rustls")]
use codebox_core::CodeBoxError;
use codebox_core::Result;

type BoxError = Box<dyn StdError + Send + Sync>;

#[cfg(feature = "rustls")]
pub(crate) type Inner = hyper_rustls::HttpsConnector<HttpConnector>;
#[cfg(not(feature = "rustls"))]
pub(crate) type Inner = HttpConnector;

/// Opening a connection took longer than the connect timeout.
#[derive(Debug)]
pub(crate) struct ConnectTimedOut(pub(crate) Duration);

impl fmt::Display for ConnectTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "connecting took longer than {:.1}s", self.0.as_secs_f64())
    }
}

impl StdError for ConnectTimedOut {}

/// A connector that gives up after a deadline.
#[derive(Clone, Debug)]
pub(crate) struct Connector {
    inner: Inner,
    timeout: Duration,
}

impl Connector {
    pub(crate) fn new(timeout: Duration, extra_roots: &[super::config::PemCertificates]) -> Result<Self> {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(60)));
        #[cfg(feature = "rustls")]
        let inner = {
            http.enforce_http(false);
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls_config(extra_roots)?)
                .https_or_http()
                .enable_http1()
                .enable_http2()
                .wrap_connector(http)
        };
        #[cfg(not(feature = "rustls"))]
        let inner = {
            let _ = extra_roots;
            http
        };
        Ok(Self { inner, timeout })
    }
}

/// The rustls configuration: the ring provider, the webpki roots plus `extra_roots`.
#[cfg(feature = "rustls")]
fn tls_config(extra_roots: &[super::config::PemCertificates]) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    for pem in extra_roots {
        let mut found = false;
        for cert in CertificateDer::pem_slice_iter(&pem.0) {
            let cert =
                cert.map_err(|e| CodeBoxError::invalid(format!("invalid PEM certificate: {e}")).with_source(e))?;
            roots
                .add(cert)
                .map_err(|e| CodeBoxError::invalid(format!("unusable root certificate: {e}")).with_source(e))?;
            found = true;
        }
        if !found {
            return Err(CodeBoxError::invalid("no certificate found in the PEM data"));
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
        .with_safe_default_protocol_versions()
        .map_err(|e| CodeBoxError::invalid(format!("TLS setup failed: {e}")).with_source(e))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl tower_service::Service<Uri> for Connector {
    type Response = <Inner as tower_service::Service<Uri>>::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = std::result::Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let timeout = self.timeout;
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                // The TLS connector already fails with a boxed error; the plain one does not.
                #[allow(clippy::useless_conversion)]
                Ok(result) => result.map_err(Into::into),
                Err(_) => Err(Box::new(ConnectTimedOut(timeout)) as BoxError),
            }
        })
    }
}
