//! [`Client`]: the sessions of a CodeBox server, blocking.

#[cfg(feature = "remote")]
pub use remote::{Client, ClientBuilder};

#[cfg(feature = "remote")]
mod remote {
    use crate::{CodeBoxSettings, PoolStats, Result, SessionFilter, SessionInfo, SessionRequest, TemplateInfo};

    use super::super::{RemoteBox, check_not_async, wait};

    /// [`crate::Client`] whose methods block: create, attach and list the sessions of one
    /// server and API key, and read its templates and pools.
    ///
    /// ```no_run
    /// # fn demo() -> codebox::Result<()> {
    /// use codebox::blocking::Client;
    /// use codebox::SessionRequest;
    ///
    /// let client = Client::builder().with_base_url("http://127.0.0.1:8069").with_api_key("sk-...").build()?;
    /// let sandbox = client.create(SessionRequest::new().with_metadata("user", "alice"))?;
    /// println!("{}", sandbox.exec("print(1 + 1)")?.stdout());
    /// sandbox.stop()?;
    /// # Ok(()) }
    /// ```
    #[derive(Debug, Clone)]
    pub struct Client {
        inner: crate::Client,
    }

    impl Client {
        /// A builder: that of [`crate::Client`], whose `build` is used as it is.
        pub fn builder() -> ClientBuilder {
            ClientBuilder { inner: crate::Client::builder() }
        }

        /// [`crate::Client::from_settings`].
        pub fn from_settings(settings: &CodeBoxSettings) -> Result<Self> {
            check_not_async()?;
            Ok(Self { inner: crate::Client::from_settings(settings)? })
        }

        /// A client for the server and key of `CODEBOX_*` variables (and a `.env` file).
        pub fn from_env() -> Result<Self> {
            Self::from_settings(&crate::settings_from_env_and_file(".env")?)
        }

        /// The blocking form of an async client.
        pub fn from_async(inner: crate::Client) -> Self {
            Self { inner }
        }

        /// The async client behind this one.
        pub fn as_async(&self) -> &crate::Client {
            &self.inner
        }

        /// The base URL of the server.
        pub fn base_url(&self) -> &str {
            self.inner.base_url()
        }

        /// [`crate::Client::create`]: a started session, deleted when the box is stopped or
        /// dropped.
        pub fn create(&self, request: SessionRequest) -> Result<RemoteBox> {
            let c = self.inner.clone();
            wait(async move { c.create(request).await }).map(RemoteBox::new)
        }

        /// [`crate::Client::get`]: attach to an existing session, left alone when dropped.
        pub fn get(&self, id: &str) -> Result<RemoteBox> {
            let (c, id) = (self.inner.clone(), id.to_owned());
            wait(async move { c.get(&id).await }).map(RemoteBox::new)
        }

        /// [`crate::Client::list`].
        pub fn list(&self, filter: SessionFilter) -> Result<Vec<SessionInfo>> {
            let c = self.inner.clone();
            wait(async move { c.list(filter).await })
        }

        /// [`crate::Client::resume`]: resume the key's paused session `id` and attach to it,
        /// with the report of what came back of it.
        pub fn resume(&self, id: &str) -> Result<(RemoteBox, crate::ResumeReport)> {
            let (c, id) = (self.inner.clone(), id.to_owned());
            wait(async move { c.resume(&id).await }).map(|(b, report)| (RemoteBox::new(b), report))
        }

        /// [`crate::Client::templates`].
        pub fn templates(&self) -> Result<Vec<TemplateInfo>> {
            let c = self.inner.clone();
            wait(async move { c.templates().await })
        }

        /// [`crate::Client::pool`].
        pub fn pool(&self) -> Result<Vec<PoolStats>> {
            let c = self.inner.clone();
            wait(async move { c.pool().await })
        }
    }

    /// Builds a blocking [`Client`]: [`crate::remote::ClientBuilder`]'s settings.
    #[derive(Debug, Clone)]
    pub struct ClientBuilder {
        inner: crate::remote::ClientBuilder,
    }

    impl ClientBuilder {
        /// The server's base URL, e.g. `http://127.0.0.1:8069`.
        pub fn with_base_url(self, url: impl Into<String>) -> Self {
            Self { inner: self.inner.with_base_url(url) }
        }

        /// The API key sent as `Authorization: Bearer`.
        pub fn with_api_key(self, key: impl Into<String>) -> Self {
            Self { inner: self.inner.with_api_key(key) }
        }

        /// The timeout of an execution whose options set none.
        pub fn with_execution_timeout(self, timeout: std::time::Duration) -> Self {
            Self { inner: self.inner.with_execution_timeout(timeout) }
        }

        /// Any other setting, on the async builder.
        pub fn with_async_builder(
            self,
            f: impl FnOnce(crate::remote::ClientBuilder) -> crate::remote::ClientBuilder,
        ) -> Self {
            Self { inner: f(self.inner) }
        }

        /// Check the settings and make the client.
        pub fn build(self) -> Result<Client> {
            check_not_async()?;
            Ok(Client { inner: self.inner.build()? })
        }
    }
}
