//! A `TokenCredential` that hands out the emulator's current token.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use azure_core::credentials::{AccessToken, Secret, TokenCredential, TokenRequestOptions};
use azure_core::time::{Duration, OffsetDateTime};

use super::state::Shared;

/// Token handed out while auth is off (the emulator then accepts anything).
pub(crate) const NO_AUTH_TOKEN: &str = "emulator-auth-disabled";

pub(crate) struct EmulatorCredential {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for EmulatorCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the token.
        f.debug_struct("EmulatorCredential").finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl TokenCredential for EmulatorCredential {
    async fn get_token(
        &self,
        _scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        self.shared.token_requests.fetch_add(1, Ordering::Relaxed);
        let token = self
            .shared
            .lock()
            .token
            .clone()
            .unwrap_or_else(|| Secret::new(NO_AUTH_TOKEN));
        Ok(AccessToken::new(token, OffsetDateTime::now_utc() + Duration::hours(1)))
    }
}
