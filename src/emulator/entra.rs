//! The Entra ID token endpoint on the emulator's listener ([`EmulatorBuilder::entra`]), so that
//! the `ClientSecretCredential` of any Azure SDK, its authority host set to the emulator, gets a
//! token the uploads accept:
//!
//! - `POST /{tenant}/oauth2/v2.0/token`, form body `grant_type=client_credentials`, `client_id`,
//!   `client_secret` (or `client_assertion`) and `scope`: answers
//!   `{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":..}` with the
//!   emulator's current token (any client id and secret are accepted). Errors have Entra's shape,
//!   `{"error":"invalid_request","error_description":"AADSTS900144: ..","error_codes":[900144]}`.
//! - `GET /{tenant}/v2.0/.well-known/openid-configuration`: the document MSAL (under Python's and
//!   JavaScript's azure-identity) reads before asking for a token, naming this server's token
//!   endpoint. MSAL asks the *public cloud's* host for instance discovery of an unknown authority,
//!   so those SDKs need it turned off (Python `disable_instance_discovery=True`, JS
//!   `disableInstanceDiscovery: true`); `GET /common/discovery/instance` is answered here too,
//!   for clients that ask the authority itself.
//!
//! [`EmulatorBuilder::entra`]: super::EmulatorBuilder::entra

use hyper::{Method, Response};
use serde_json::{Value, json};

use super::credential::NO_AUTH_TOKEN;
use super::query::json_response;
use super::request::{Body, BodyRead, Recorder, percent_decode};
use super::state::Shared;

/// Lifetime announced for issued tokens, in seconds (as Entra: just under an hour).
const EXPIRES_IN: u64 = 3599;

/// A path of the Entra routes.
#[derive(Debug)]
pub(super) enum EntraRoute {
    /// `/{tenant}/oauth2/v2.0/token`
    Token,
    /// `/{tenant}/v2.0/.well-known/openid-configuration` (also without `v2.0/`).
    OpenIdConfiguration { tenant: String },
    /// `/common/discovery/instance`
    InstanceDiscovery,
}

/// The Entra route a path names, if any.
pub(super) fn entra_route(path: &str) -> Option<EntraRoute> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        [tenant, "oauth2", "v2.0", "token"] if !tenant.is_empty() => Some(EntraRoute::Token),
        [tenant, "v2.0", ".well-known", "openid-configuration"] | [tenant, ".well-known", "openid-configuration"]
            if !tenant.is_empty() =>
        {
            Some(EntraRoute::OpenIdConfiguration {
                tenant: percent_decode(tenant)?,
            })
        }
        ["common", "discovery", "instance"] => Some(EntraRoute::InstanceDiscovery),
        _ => None,
    }
}

/// Answers an Entra request.
pub(super) fn answer(
    shared: &Shared,
    parts: &hyper::http::request::Parts,
    route: EntraRoute,
    body: BodyRead,
    rec: &mut Recorder,
) -> Response<Body> {
    let endpoint = shared.endpoint.get().cloned().unwrap_or_default();
    match route {
        EntraRoute::Token if parts.method == Method::POST => token(shared, body, rec),
        EntraRoute::OpenIdConfiguration { tenant } if parts.method == Method::GET => {
            let base = format!("{endpoint}/{tenant}");
            ok(
                rec,
                &json!({
                    "token_endpoint": format!("{base}/oauth2/v2.0/token"),
                    "authorization_endpoint": format!("{base}/oauth2/v2.0/authorize"),
                    "device_authorization_endpoint": format!("{base}/oauth2/v2.0/devicecode"),
                    "end_session_endpoint": format!("{base}/oauth2/v2.0/logout"),
                    "issuer": format!("{base}/v2.0"),
                    "jwks_uri": format!("{endpoint}/{tenant}/discovery/v2.0/keys"),
                    "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                    "subject_types_supported": ["pairwise"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                    "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
                    "scopes_supported": ["openid", "profile", "email", "offline_access"],
                    "tenant_region_scope": null,
                    "cloud_instance_name": "emulator",
                }),
            )
        }
        EntraRoute::InstanceDiscovery if parts.method == Method::GET => {
            let host = endpoint.split_once("://").map_or(endpoint.as_str(), |(_, h)| h);
            ok(
                rec,
                &json!({
                    "tenant_discovery_endpoint": format!("{endpoint}/common/v2.0/.well-known/openid-configuration"),
                    "api-version": "1.1",
                    "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
                }),
            )
        }
        _ => {
            rec.finish(Some(405), Some("MethodNotAllowed"), None);
            entra_error(
                405,
                "invalid_request",
                900561,
                "The endpoint only accepts POST or GET as documented.",
            )
        }
    }
}

fn ok(rec: &mut Recorder, body: &Value) -> Response<Body> {
    rec.finish(Some(200), None, None);
    json_response(200, body, None)
}

/// `POST /{tenant}/oauth2/v2.0/token` with the client credentials grant.
fn token(shared: &Shared, body: BodyRead, rec: &mut Recorder) -> Response<Body> {
    let form = match &body {
        BodyRead::Complete(bytes) => form_pairs(&String::from_utf8_lossy(bytes)),
        BodyRead::TooLarge => Vec::new(),
    };
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };
    let missing = ["grant_type", "client_id", "scope"]
        .into_iter()
        .find(|name| field(name).is_none());
    let refusal = if let Some(name) = missing {
        Some((
            "invalid_request",
            900144,
            format!("The request body must contain the following parameter: '{name}'."),
        ))
    } else if field("grant_type") != Some("client_credentials") {
        Some((
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type; the emulator issues client_credentials only.".to_owned(),
        ))
    } else if field("client_secret").is_none() && field("client_assertion").is_none() {
        Some((
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.".to_owned(),
        ))
    } else {
        None
    };
    if let Some((error, code, description)) = refusal {
        rec.finish(Some(400), Some(error), None);
        return entra_error(400, error, code, &description);
    }
    let token = shared
        .lock()
        .token
        .as_ref()
        .map_or_else(|| NO_AUTH_TOKEN.to_owned(), |t| t.secret().to_owned());
    ok(
        rec,
        &json!({
            "token_type": "Bearer",
            "expires_in": EXPIRES_IN,
            "ext_expires_in": EXPIRES_IN,
            "access_token": token,
        }),
    )
}

/// Entra's error body.
fn entra_error(status: u16, error: &str, code: u32, description: &str) -> Response<Body> {
    json_response(
        status,
        &json!({
            "error": error,
            "error_description": format!("AADSTS{code}: {description}"),
            "error_codes": [code],
        }),
        None,
    )
}

/// The pairs of an `application/x-www-form-urlencoded` body (`+` is a space); pairs with a bad
/// escape are skipped.
fn form_pairs(body: &str) -> Vec<(String, String)> {
    body.split('&')
        .filter(|pair| !pair.is_empty())
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| percent_decode(&s.replace('+', " "));
            Some((decode(k)?, decode(v)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_forms() {
        assert!(matches!(entra_route("/t1/oauth2/v2.0/token"), Some(EntraRoute::Token)));
        assert!(matches!(
            entra_route("/t1/v2.0/.well-known/openid-configuration"),
            Some(EntraRoute::OpenIdConfiguration { tenant }) if tenant == "t1"
        ));
        assert!(matches!(
            entra_route("/common/discovery/instance"),
            Some(EntraRoute::InstanceDiscovery)
        ));
        assert!(entra_route("//oauth2/v2.0/token").is_none());
        assert!(entra_route("/dataCollectionRules/x/streams/y").is_none());
        assert_eq!(
            form_pairs("grant_type=client_credentials&scope=https%3A%2F%2Fmonitor.azure.com%2F%2F.default&a=b+c"),
            vec![
                ("grant_type".into(), "client_credentials".into()),
                ("scope".into(), "https://monitor.azure.com//.default".into()),
                ("a".into(), "b c".into()),
            ]
        );
    }
}
