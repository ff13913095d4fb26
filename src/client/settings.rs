//! Client settings and their checks, shared by [`LogsIngestionClientBuilder`] and the
//! pipeline's builder; the default HTTP client.

use super::*;

/// Client settings, shared by [`LogsIngestionClientBuilder`] and the pipeline's builder so the
/// defaults and the checks live in one place.
#[derive(Clone)]
pub(crate) struct ClientSettings {
    pub(crate) audience: Audience,
    pub(crate) max_concurrency: usize,
    pub(crate) retry: RetryPolicy,
    pub(crate) request_timeout: Duration,
    pub(crate) gzip_level: u32,
    pub(crate) max_uncompressed: usize,
    pub(crate) user_agent_suffix: Option<String>,
    pub(crate) http: Option<reqwest::Client>,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            audience: Audience::default(),
            max_concurrency: 5,
            retry: RetryPolicy::default(),
            request_timeout: Duration::from_secs(30),
            gzip_level: 3,
            max_uncompressed: MAX_BODY_BYTES,
            user_agent_suffix: None,
            http: None,
        }
    }
}

impl fmt::Debug for ClientSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientSettings")
            .field("audience", &self.audience)
            .field("max_concurrency", &self.max_concurrency)
            .field("retry", &self.retry)
            .field("request_timeout", &self.request_timeout)
            .field("gzip_level", &self.gzip_level)
            .field("max_uncompressed", &self.max_uncompressed)
            .finish_non_exhaustive()
    }
}

impl ClientSettings {
    /// Checks the settings and builds the client. Fails on a malformed endpoint, on plain
    /// `http://` to anything but a loopback host, and on out-of-range options.
    pub(crate) fn build(
        self,
        endpoint: &str,
        credential: Arc<dyn TokenCredential>,
    ) -> Result<LogsIngestionClient, ConfigError> {
        let endpoint = parse_endpoint(endpoint)?;
        if self.max_concurrency == 0 {
            return Err(invalid("max_concurrency", "must be at least 1"));
        }
        if self.gzip_level > 9 {
            return Err(invalid("gzip_level", "must be 0 to 9"));
        }
        if self.max_uncompressed < 2 {
            return Err(invalid("max_uncompressed_batch", "must hold at least an empty array"));
        }
        if self.request_timeout.is_zero() {
            return Err(invalid("request_timeout", "must be above zero"));
        }
        let mut agent = format!(
            "tracing-azure-logs/{} (rust; {}/{})",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
            std::env::consts::ARCH
        );
        if let Some(suffix) = &self.user_agent_suffix {
            agent.push(' ');
            agent.push_str(suffix);
        }
        let user_agent =
            HeaderValue::from_str(&agent).map_err(|_| invalid("user_agent_suffix", "not a valid header value"))?;
        let http = match self.http {
            Some(http) => http,
            None => default_http_client()?,
        };
        Ok(LogsIngestionClient {
            inner: Arc::new(Inner {
                endpoint,
                http,
                tokens: TokenCache::new(credential, self.audience.scope().to_owned()),
                max_concurrency: self.max_concurrency,
                retry: self.retry,
                request_timeout: self.request_timeout,
                gzip_level: self.gzip_level,
                max_uncompressed: self.max_uncompressed,
                user_agent,
                counters: RequestCounters::default(),
            }),
        })
    }
}

/// Builds a [`LogsIngestionClient`]; see each method for its default.
pub struct LogsIngestionClientBuilder {
    pub(super) endpoint: String,
    pub(super) credential: Arc<dyn TokenCredential>,
    pub(super) settings: ClientSettings,
}

impl fmt::Debug for LogsIngestionClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogsIngestionClientBuilder")
            .field("endpoint", &self.endpoint)
            .field("credential", &self.credential)
            .field("settings", &self.settings)
            .finish()
    }
}

impl LogsIngestionClientBuilder {
    /// The cloud whose token audience to ask for. Default: Azure public cloud.
    pub fn audience(mut self, audience: Audience) -> Self {
        self.settings.audience = audience;
        self
    }

    /// Requests in flight at once per `upload`. Default 5; at least 1.
    pub fn max_concurrency(mut self, n: usize) -> Self {
        self.settings.max_concurrency = n;
        self
    }

    /// How failed requests are retried. Default: [`RetryPolicy::default`].
    pub fn retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.settings.retry = retry;
        self
    }

    /// Time limit of one HTTP attempt. Default 30 s.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.settings.request_timeout = timeout;
        self
    }

    /// gzip level, 0 (store) to 9 (smallest). Default 3: fast, and about 6.5x on log rows.
    pub fn gzip_level(mut self, level: u32) -> Self {
        self.settings.gzip_level = level;
        self
    }

    /// Cap on a batch's uncompressed JSON array, in bytes. Default 1,048,576 (the documented limit
    /// applies to both the compressed and uncompressed size). It may be raised; the gzipped body is
    /// kept at most 1,048,576 bytes whatever this is.
    pub fn max_uncompressed_batch(mut self, bytes: usize) -> Self {
        self.settings.max_uncompressed = bytes;
        self
    }

    /// Text appended to the `User-Agent` header.
    pub fn user_agent_suffix(mut self, suffix: impl Into<String>) -> Self {
        self.settings.user_agent_suffix = Some(suffix.into());
        self
    }

    /// The HTTP client to use (for proxies, custom roots, HTTP/2 settings). Default: see
    /// [`default_http_client`]. Redirects should stay off: a redirect would carry the token.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.settings.http = Some(client);
        self
    }

    /// Checks the settings and builds the client. Fails on a malformed endpoint, on plain `http://`
    /// to anything but a loopback host, and on out-of-range options.
    pub fn build(self) -> Result<LogsIngestionClient, ConfigError> {
        self.settings.build(&self.endpoint, self.credential)
    }
}

fn invalid(option: &'static str, reason: &str) -> ConfigError {
    ConfigError::InvalidOption {
        option,
        reason: reason.to_owned(),
    }
}

/// Checks an ingestion endpoint: an absolute URL with a host, https unless the host is loopback,
/// no query or fragment. A trailing slash is dropped.
pub(crate) fn parse_endpoint(endpoint: &str) -> Result<Url, ConfigError> {
    let bad = |reason: &str| ConfigError::InvalidEndpoint {
        endpoint: endpoint.to_owned(),
        reason: reason.to_owned(),
    };
    let url = Url::parse(endpoint.trim()).map_err(|e| bad(&e.to_string()))?;
    if !url.username().is_empty() || url.password().is_some() {
        // Not echoed: the error would carry the password.
        let mut shown = url.clone();
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
        return Err(ConfigError::InvalidEndpoint {
            endpoint: shown.to_string(),
            reason: "it must not contain a user name or password (the client authenticates with its credential)".into(),
        });
    }
    let host = url.host_str().ok_or_else(|| bad("it has no host"))?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("it must not have a query or fragment"));
    }
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(host) => {}
        "http" => {
            return Err(ConfigError::InsecureEndpoint {
                endpoint: endpoint.to_owned(),
            });
        }
        other => return Err(bad(&format!("scheme {other:?} is not https"))),
    }
    Ok(url)
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The HTTP client used when none is given: rustls, HTTP/2 over TLS, connect timeout 10 s, no
/// redirects (a redirect would carry the bearer token elsewhere), idle connections kept 90 s.
pub fn default_http_client() -> Result<reqwest::Client, ConfigError> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(90))
        .redirect(reqwest::redirect::Policy::none())
        .tcp_nodelay(true)
        .build()
        .map_err(|e| ConfigError::HttpClient(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert!(parse_endpoint("https://dce.eastus-1.ingest.monitor.azure.com").is_ok());
        assert!(parse_endpoint("http://127.0.0.1:8080").is_ok());
        assert!(parse_endpoint("http://localhost:1").is_ok());
        assert!(parse_endpoint("http://[::1]:1").is_ok());
        assert!(matches!(
            parse_endpoint("http://dce.example.com"),
            Err(ConfigError::InsecureEndpoint { .. })
        ));
        assert!(matches!(
            parse_endpoint("http://10.0.0.1"),
            Err(ConfigError::InsecureEndpoint { .. })
        ));
        assert!(parse_endpoint("ftp://x").is_err());
        assert!(parse_endpoint("not a url").is_err());
        assert!(parse_endpoint("https://x/?a=b").is_err());
    }
}
