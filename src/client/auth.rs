//! Access tokens: the audience per cloud, a shared single-flight token cache, and a credential
//! picked from the environment.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use azure_core::credentials::{AccessToken, Secret, TokenCredential, TokenRequestOptions};
use azure_core::http::{ClientOptions, ExponentialRetryOptions, RetryOptions, Transport};
use azure_identity::{
    ClientSecretCredential, ClientSecretCredentialOptions, DeveloperToolsCredential, ManagedIdentityCredential,
    ManagedIdentityCredentialOptions, UserAssignedId, WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};

use super::error::FailureReason;
use crate::env::{env_var, missing_vars};
use crate::error::ConfigError;

/// Which Azure cloud the ingestion endpoint is in; it decides the token scope.
///
/// A token for the wrong cloud is answered with 401. The default is the public cloud.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Audience {
    /// Azure public cloud: scope `https://monitor.azure.com//.default`.
    #[default]
    AzurePublic,
    /// Azure US Government: scope `https://monitor.azure.us//.default`.
    AzureUsGovernment,
    /// Azure China (21Vianet): scope `https://monitor.azure.cn//.default`.
    AzureChina,
    /// Any other scope, used as given.
    Custom(String),
}

impl Audience {
    /// The OAuth scope to ask the credential for (the official SDKs' spelling).
    pub fn scope(&self) -> &str {
        match self {
            Audience::AzurePublic => "https://monitor.azure.com//.default",
            Audience::AzureUsGovernment => "https://monitor.azure.us//.default",
            Audience::AzureChina => "https://monitor.azure.cn//.default",
            Audience::Custom(scope) => scope,
        }
    }
}

/// `ClientOptions` for azure_identity credentials that suit a logger: a short retry policy (3
/// retries within 10 s instead of the SDK's default, which takes about 80 s to fail on an
/// unreachable endpoint) and `http` as the transport, so tokens and uploads share one connection
/// pool and one TLS configuration.
pub fn credential_client_options(http: &reqwest::Client) -> ClientOptions {
    ClientOptions {
        retry: RetryOptions::exponential(ExponentialRetryOptions {
            initial_delay: azure_core::time::Duration::milliseconds(200),
            max_retries: 3,
            max_total_elapsed: azure_core::time::Duration::seconds(10),
            max_delay: azure_core::time::Duration::seconds(2),
        }),
        transport: Some(Transport::new(Arc::new(http.clone()))),
        ..ClientOptions::default()
    }
}

/// Picks a credential from the environment, as `DefaultAzureCredential` does in the other Azure SDKs
/// (azure_identity 1.0 has no such chain), using the crate's default HTTP client.
///
/// See [`credential_from_env_with`] for the order.
pub fn credential_from_env() -> Result<Arc<dyn TokenCredential>, ConfigError> {
    credential_from_env_with(&super::default_http_client()?)
}

/// Picks a credential from the environment, with `http` as its transport:
///
/// 1. `AZURE_TENANT_ID`, `AZURE_CLIENT_ID` and `AZURE_CLIENT_SECRET` → `ClientSecretCredential`;
/// 2. `AZURE_FEDERATED_TOKEN_FILE` → `WorkloadIdentityCredential` (AKS workload identity);
/// 3. `IDENTITY_ENDPOINT` or `MSI_ENDPOINT` (App Service, Functions, Container Apps), or
///    `AZURE_USE_MANAGED_IDENTITY=true` (a VM's IMDS, which has no environment marker) →
///    `ManagedIdentityCredential`, user-assigned when `AZURE_CLIENT_ID` is set;
/// 4. otherwise `DeveloperToolsCredential` (Azure CLI, then Azure Developer CLI).
///
/// A token error from the chosen credential lists what was tried, so a missing variable is easy
/// to spot. The credential's own retries are short (see [`credential_client_options`]).
pub fn credential_from_env_with(http: &reqwest::Client) -> Result<Arc<dyn TokenCredential>, ConfigError> {
    let var = env_var;
    let mut tried = Vec::new();
    let http = http.clone();

    match (
        var("AZURE_TENANT_ID"),
        var("AZURE_CLIENT_ID"),
        var("AZURE_CLIENT_SECRET"),
    ) {
        (Some(tenant), Some(client_id), Some(secret)) => {
            let secret = Secret::new(secret);
            return EnvCredential::build(
                "client secret credential from AZURE_TENANT_ID/AZURE_CLIENT_ID/AZURE_CLIENT_SECRET",
                "client secret (AZURE_CLIENT_SECRET)",
                tried,
                move || {
                    let options = ClientSecretCredentialOptions {
                        client_options: credential_client_options(&http),
                    };
                    let built = ClientSecretCredential::new(&tenant, client_id.clone(), secret.clone(), Some(options))?;
                    Ok(built as Arc<dyn TokenCredential>)
                },
            );
        }
        (tenant, client, secret) => tried.push(format!(
            "client secret: not used, missing {}",
            missing_vars([
                ("AZURE_TENANT_ID", &tenant),
                ("AZURE_CLIENT_ID", &client),
                ("AZURE_CLIENT_SECRET", &secret)
            ])
            .join(", ")
        )),
    }

    if var("AZURE_FEDERATED_TOKEN_FILE").is_some() {
        return EnvCredential::build(
            "workload identity credential from AZURE_FEDERATED_TOKEN_FILE",
            "workload identity (AZURE_FEDERATED_TOKEN_FILE)",
            tried,
            move || {
                let mut options = WorkloadIdentityCredentialOptions::default();
                options.credential_options.client_options = credential_client_options(&http);
                Ok(WorkloadIdentityCredential::new(Some(options))? as Arc<dyn TokenCredential>)
            },
        );
    }
    tried.push("workload identity: not used, AZURE_FEDERATED_TOKEN_FILE is not set".into());

    let forced = var("AZURE_USE_MANAGED_IDENTITY").is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    if forced || var("IDENTITY_ENDPOINT").is_some() || var("MSI_ENDPOINT").is_some() {
        let client_id = var("AZURE_CLIENT_ID");
        return EnvCredential::build("managed identity credential", "managed identity", tried, move || {
            let options = ManagedIdentityCredentialOptions {
                user_assigned_id: client_id.clone().map(UserAssignedId::ClientId),
                client_options: credential_client_options(&http),
            };
            Ok(ManagedIdentityCredential::new(Some(options))? as Arc<dyn TokenCredential>)
        });
    }
    tried.push(
        "managed identity: not used, none of IDENTITY_ENDPOINT, MSI_ENDPOINT, AZURE_USE_MANAGED_IDENTITY=true is set"
            .into(),
    );

    EnvCredential::build(
        "developer tools credential",
        "developer tools (Azure CLI, Azure Developer CLI)",
        tried,
        || Ok(DeveloperToolsCredential::new(None)? as Arc<dyn TokenCredential>),
    )
}

/// Marks a token request made because the service refused the previous token with 401.
///
/// The crate puts it in the request's context (`TokenRequestOptions::method_options.context`,
/// read with `context.value::<FreshToken>()`) when it asks for a token after a 401. A credential
/// should then not answer from its cache.
///
/// Pitfall: azure_identity 1.x credentials cannot be told so. They ignore the options and answer
/// from their own cache until five minutes before the token expires, so after the service
/// invalidates a token (a revoked role, a changed audience) they keep handing out the same one
/// and every upload fails with 401 until then. Credentials from [`credential_from_env`] and
/// [`RenewingCredential`] honour the marker: they build a new credential (with an empty cache) and
/// ask it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FreshToken;

type BuildCredential = dyn Fn() -> azure_core::Result<Arc<dyn TokenCredential>> + Send + Sync;

/// A credential that can start over: on a request marked [`FreshToken`] (after a 401) it builds a
/// new credential from its factory and uses that one from then on, so a token cached inside the
/// old credential is not handed out again.
///
/// Wrap azure_identity credentials in it when you build them yourself:
///
/// ```no_run
/// # fn main() -> azure_core::Result<()> {
/// use std::sync::Arc;
/// use azure_core::credentials::TokenCredential;
/// use tracing_azure_logs::client::RenewingCredential;
///
/// let credential = RenewingCredential::new(|| {
///     Ok(azure_identity::ManagedIdentityCredential::new(None)? as Arc<dyn TokenCredential>)
/// })?;
/// # Ok(()) }
/// ```
pub struct RenewingCredential {
    build: Box<BuildCredential>,
    current: RwLock<Arc<dyn TokenCredential>>,
}

impl RenewingCredential {
    /// Builds the first credential with `build`; fails as `build` does.
    pub fn new(
        build: impl Fn() -> azure_core::Result<Arc<dyn TokenCredential>> + Send + Sync + 'static,
    ) -> azure_core::Result<Arc<Self>> {
        let current = RwLock::new(build()?);
        Ok(Arc::new(RenewingCredential {
            build: Box::new(build),
            current,
        }))
    }

    fn current(&self) -> Arc<dyn TokenCredential> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl fmt::Debug for RenewingCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RenewingCredential")
            .field("current", &self.current())
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl TokenCredential for RenewingCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        let fresh = options
            .as_ref()
            .is_some_and(|o| o.method_options.context.value::<FreshToken>().is_some());
        let credential = if fresh {
            let renewed = (self.build)()?;
            *self.current.write().unwrap_or_else(|e| e.into_inner()) = renewed.clone();
            renewed
        } else {
            self.current()
        };
        credential.get_token(scopes, options).await
    }
}

/// A credential chosen from the environment; its errors say what was chosen and what was not.
/// It renews itself after a 401 ([`FreshToken`]).
struct EnvCredential {
    inner: Arc<RenewingCredential>,
    chosen: &'static str,
    tried: Vec<String>,
}

impl EnvCredential {
    fn build(
        what: &str,
        chosen: &'static str,
        tried: Vec<String>,
        build: impl Fn() -> azure_core::Result<Arc<dyn TokenCredential>> + Send + Sync + 'static,
    ) -> Result<Arc<dyn TokenCredential>, ConfigError> {
        let inner = RenewingCredential::new(build).map_err(|e| ConfigError::Credential(format!("{what}: {e}")))?;
        Ok(Arc::new(EnvCredential { inner, chosen, tried }))
    }
}

impl fmt::Debug for EnvCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvCredential")
            .field("chosen", &self.chosen)
            .field("inner", &self.inner)
            .finish()
    }
}

#[async_trait::async_trait]
impl TokenCredential for EnvCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        self.inner.get_token(scopes, options).await.map_err(|e| {
            let mut message = format!("{} credential failed: {e}", self.chosen);
            for t in &self.tried {
                message.push_str("; ");
                message.push_str(t);
            }
            azure_core::Error::with_message(azure_core::error::ErrorKind::Credential, message)
        })
    }
}

/// A token as the cache keeps it. `Debug` never shows the token.
pub(crate) struct CachedToken {
    /// `Bearer <token>`, built once per token and marked sensitive (hidden from `Debug` of the
    /// request and its headers).
    pub(crate) authorization: reqwest::header::HeaderValue,
    refresh_at: Instant,
}

impl fmt::Debug for CachedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedToken")
            .field("refresh_at", &self.refresh_at)
            .finish_non_exhaustive()
    }
}

/// Shares one token among all uploads: cached until shortly before it expires, and refreshed by
/// one request however many uploads need it at once. Uploads that waited behind a fetch that
/// failed share its error instead of each asking again; a later call (a retry) asks afresh.
pub(crate) struct TokenCache {
    credential: Arc<dyn TokenCredential>,
    scope: String,
    current: RwLock<Option<Arc<CachedToken>>>,
    /// The outcome of the last fetch: its number and, if it failed, the error.
    last: RwLock<(u64, Option<String>)>,
    fetch_lock: tokio::sync::Mutex<()>,
    fetches: AtomicU64,
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field("scope", &self.scope)
            .field("credential", &self.credential)
            .field("fetches", &self.fetches.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl TokenCache {
    pub(crate) fn new(credential: Arc<dyn TokenCredential>, scope: String) -> Self {
        TokenCache {
            credential,
            scope,
            current: RwLock::new(None),
            last: RwLock::new((0, None)),
            fetch_lock: tokio::sync::Mutex::new(()),
            fetches: AtomicU64::new(0),
        }
    }

    /// The scope tokens are asked for.
    pub(crate) fn scope(&self) -> &str {
        &self.scope
    }

    /// Times the credential was asked for a token.
    pub(crate) fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// A token that is not due for refresh, fetching one if needed.
    pub(crate) async fn get(&self) -> Result<Arc<CachedToken>, FailureReason> {
        if let Some(token) = self.fresh() {
            return Ok(token);
        }
        let seen = self.last_fetch();
        let _one_fetch = self.fetch_lock.lock().await;
        if let Some(token) = self.fresh() {
            return Ok(token);
        }
        self.shared_failure(seen)?;
        self.fetch(false).await
    }

    /// After a 401 with `rejected`: fetch a new token (marked [`FreshToken`]), unless another
    /// upload already did.
    pub(crate) async fn replace(&self, rejected: &Arc<CachedToken>) -> Result<Arc<CachedToken>, FailureReason> {
        let seen = self.last_fetch();
        let _one_fetch = self.fetch_lock.lock().await;
        if let Some(token) = self.fresh()
            && !Arc::ptr_eq(&token, rejected)
        {
            return Ok(token);
        }
        self.shared_failure(seen)?;
        self.fetch(true).await
    }

    fn fresh(&self) -> Option<Arc<CachedToken>> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        current.as_ref().filter(|t| Instant::now() < t.refresh_at).cloned()
    }

    fn last_fetch(&self) -> u64 {
        self.last.read().unwrap_or_else(|e| e.into_inner()).0
    }

    /// The error of a fetch that finished while this caller waited for the lock, if it failed.
    fn shared_failure(&self, seen: u64) -> Result<(), FailureReason> {
        match &*self.last.read().unwrap_or_else(|e| e.into_inner()) {
            (n, Some(message)) if *n != seen => Err(self.auth_error(message.clone())),
            _ => Ok(()),
        }
    }

    /// Asks the credential; `after_401` marks the request [`FreshToken`].
    async fn fetch(&self, after_401: bool) -> Result<Arc<CachedToken>, FailureReason> {
        let number = self.fetches.fetch_add(1, Ordering::Relaxed) + 1;
        let options = after_401.then(|| TokenRequestOptions {
            method_options: azure_core::http::ClientMethodOptions {
                context: azure_core::http::Context::new().with_value(FreshToken),
            },
        });
        let result = self.credential.get_token(&[&self.scope], options).await;
        let mut last = self.last.write().unwrap_or_else(|e| e.into_inner());
        // A token that cannot be a header value fails like a credential error.
        let result = result.map_err(|e| e.to_string()).and_then(|access| {
            let mut authorization = reqwest::header::HeaderValue::try_from(format!("Bearer {}", access.token.secret()))
                .map_err(|_| "the credential returned a token that is not a valid HTTP header value".to_owned())?;
            authorization.set_sensitive(true);
            Ok((access, authorization))
        });
        match result {
            Ok((access, authorization)) => {
                let lifetime = (access.expires_on - azure_core::time::OffsetDateTime::now_utc())
                    .try_into()
                    .unwrap_or(Duration::ZERO);
                // Refresh 5 minutes ahead, or at half-life for short-lived tokens.
                let margin = (lifetime / 2).min(Duration::from_secs(300));
                let token = Arc::new(CachedToken {
                    authorization,
                    refresh_at: Instant::now() + lifetime - margin,
                });
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(token.clone());
                *last = (number, None);
                Ok(token)
            }
            Err(message) => {
                *last = (number, Some(message.clone()));
                Err(self.auth_error(message))
            }
        }
    }

    /// The failure for a credential that gave no token within `waited`.
    /// `fetch` (a `get` or `replace`), failing once `limit` has passed: a credential that never
    /// answers must not outlive the retry deadline.
    pub(crate) async fn within(
        &self,
        limit: Duration,
        fetch: impl Future<Output = Result<Arc<CachedToken>, FailureReason>>,
    ) -> Result<Arc<CachedToken>, FailureReason> {
        tokio::time::timeout(limit, fetch)
            .await
            .unwrap_or_else(|_| Err(self.auth_error(format!("the credential gave no token within {limit:?}"))))
    }

    fn auth_error(&self, message: String) -> FailureReason {
        FailureReason::Authentication {
            scope: self.scope.clone(),
            message,
        }
    }
}

/// A credential that always returns the same token, valid for an hour from each call. For the
/// local emulator and tests; never for production, where tokens expire. `Debug` hides the token.
pub struct StaticTokenCredential {
    token: Secret,
}

impl StaticTokenCredential {
    /// A credential returning `token`.
    pub fn new(token: impl Into<String>) -> Arc<Self> {
        Arc::new(StaticTokenCredential {
            token: Secret::new(token.into()),
        })
    }
}

impl fmt::Debug for StaticTokenCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticTokenCredential").finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl TokenCredential for StaticTokenCredential {
    async fn get_token(&self, _: &[&str], _: Option<TokenRequestOptions<'_>>) -> azure_core::Result<AccessToken> {
        Ok(AccessToken::new(
            self.token.clone(),
            azure_core::time::OffsetDateTime::now_utc() + azure_core::time::Duration::hours(1),
        ))
    }
}
