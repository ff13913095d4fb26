//! The health report: steps with a verdict, what was seen, and what to fix. What each finding
//! means and its hint live here; the probing is in `check`.

use std::fmt;

/// What a health check step looked at.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// The settings themselves (endpoint, rule, stream set and well-formed).
    Settings,
    /// Getting an access token from the credential.
    Credential,
    /// Reaching the endpoint (DNS, TCP, TLS, proxy), without a token.
    Endpoint,
    /// An upload of `[]` to one stream: the rule, the stream and the role.
    Upload {
        /// The rule's immutable id.
        rule_id: String,
        /// The stream.
        stream: String,
    },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Settings => f.write_str("settings"),
            Step::Credential => f.write_str("credential"),
            Step::Endpoint => f.write_str("endpoint"),
            Step::Upload { .. } => f.write_str("upload"),
        }
    }
}

/// A step's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Works.
    Pass,
    /// Works now, but something will likely fail (a throttled rule, an audience that does not
    /// match the endpoint's cloud).
    Warn,
    /// Does not work: rows would not be delivered.
    Fail,
    /// Not run, because an earlier step failed.
    Skipped,
}

/// What a step found, for programs that act on it; the step's `hint` says the same for people.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Finding {
    /// As it should be.
    Ok,
    /// A setting is missing or malformed.
    Settings,
    /// The credential gave no token.
    Credential,
    /// The token's audience is for another cloud than the endpoint's.
    AudienceMismatch,
    /// The endpoint's host name does not resolve.
    Dns,
    /// The TLS handshake failed (an untrusted certificate, a TLS-inspecting proxy, not TLS).
    Tls,
    /// Nothing listens at the endpoint's address.
    ConnectionRefused,
    /// No answer in time.
    Timeout,
    /// The proxy in the way failed.
    Proxy,
    /// Another connection failure.
    Unreachable,
    /// 401: the token was refused (audience or cloud).
    Unauthorized,
    /// 403 with `IsRbacPresent: False`: no role on the rule, or one not applied yet.
    RoleMissing,
    /// 403 otherwise: a role exists but access is not granted (endpoint binding, scope).
    Forbidden,
    /// 404 naming the rule: no rule with this immutable id at this endpoint.
    RuleNotFound,
    /// 404 naming the stream: the rule does not declare it.
    StreamNotFound,
    /// 404 naming neither: the path, rule, stream or region.
    NotFound,
    /// 400: the service could not read the request.
    BadRequest,
    /// 413: the body was refused as too large.
    TooLarge,
    /// 429: the rule is throttled now.
    Throttled,
    /// 503 or another 5xx.
    Unavailable,
    /// A status the check does not know.
    Unexpected,
    /// The step did not run.
    Skipped,
}

/// One step of a health check.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckStep {
    /// What was looked at.
    pub step: Step,
    /// The outcome.
    pub verdict: Verdict,
    /// What it found.
    pub finding: Finding,
    /// What was seen: the status, the service's message, the error, how long it took.
    pub detail: String,
    /// What to do, when the verdict is not `Pass`.
    pub hint: Option<String>,
}

impl CheckStep {
    pub(crate) fn pass(step: Step, detail: String) -> CheckStep {
        CheckStep {
            step,
            verdict: Verdict::Pass,
            finding: Finding::Ok,
            detail,
            hint: None,
        }
    }

    pub(crate) fn problem(step: Step, verdict: Verdict, finding: Finding, detail: String, hint: String) -> CheckStep {
        CheckStep {
            step,
            verdict,
            finding,
            detail,
            hint: Some(hint),
        }
    }

    pub(crate) fn skipped(step: Step, because: &str) -> CheckStep {
        CheckStep {
            step,
            verdict: Verdict::Skipped,
            finding: Finding::Skipped,
            detail: format!("not run: {because}"),
            hint: None,
        }
    }
}

/// The outcome of a health check: every step in order. `Display` prints one screen: a line per
/// step, the hint under each problem, and the overall result.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthReport {
    /// The endpoint checked.
    pub endpoint: String,
    /// The steps, in the order they ran.
    pub steps: Vec<CheckStep>,
}

impl HealthReport {
    /// Whether rows would be delivered: no step failed or was skipped (warnings allowed).
    pub fn is_healthy(&self) -> bool {
        !self.steps.is_empty()
            && self
                .steps
                .iter()
                .all(|s| matches!(s.verdict, Verdict::Pass | Verdict::Warn))
    }

    /// The first step that failed, if any: the one to fix first.
    pub fn first_failure(&self) -> Option<&CheckStep> {
        self.steps.iter().find(|s| s.verdict == Verdict::Fail)
    }

    /// The steps of `kind` ([`Step::Upload`] matches any stream's).
    pub fn steps_of(&self, kind: &Step) -> impl Iterator<Item = &CheckStep> {
        let wanted = std::mem::discriminant(kind);
        self.steps
            .iter()
            .filter(move |s| std::mem::discriminant(&s.step) == wanted)
    }
}

impl fmt::Display for HealthReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "tracing-azure-logs health check of {}", self.endpoint)?;
        for s in &self.steps {
            let mark = match s.verdict {
                Verdict::Pass => " ok ",
                Verdict::Warn => "warn",
                Verdict::Fail => "FAIL",
                Verdict::Skipped => "skip",
            };
            let what = match &s.step {
                Step::Upload { rule_id, stream } => format!("upload to {rule_id}/{stream}"),
                other => other.to_string(),
            };
            writeln!(f, "[{mark}] {what}: {}", Shortened(&s.detail, DETAIL_CHARS))?;
            if let Some(hint) = &s.hint {
                writeln!(f, "       fix: {hint}")?;
            }
        }
        let failed = self.steps.iter().filter(|s| s.verdict == Verdict::Fail).count();
        if self.is_healthy() {
            write!(f, "healthy: rows will be accepted")
        } else {
            write!(
                f,
                "NOT healthy: {failed} step(s) failed; rows would not be delivered. Fix the first failure and check again."
            )
        }
    }
}

/// How much of a step's detail `Display` shows (the service's 403 message alone is 600
/// characters); the field keeps all of it.
const DETAIL_CHARS: usize = 300;

/// The first `.1` characters of `.0`, with `…` when cut.
struct Shortened<'a>(&'a str, usize);

impl fmt::Display for Shortened<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.char_indices().nth(self.1) {
            Some((end, _)) => write!(f, "{}…", &self.0[..end]),
            None => f.write_str(self.0),
        }
    }
}

/// The finding and hint for a credential's error message (Entra's `AADSTS` codes and the
/// azure_identity credentials' wording).
pub(crate) fn credential_hint(message: &str, scope: &str) -> String {
    let m = message.to_ascii_lowercase();
    let has = |s: &str| m.contains(&s.to_ascii_lowercase());
    if has("AADSTS7000215") {
        "the client secret is wrong: AZURE_CLIENT_SECRET must be the secret's Value (not its Secret ID)".into()
    } else if has("AADSTS7000222") {
        "the client secret has expired: create a new one for the app registration".into()
    } else if has("AADSTS700016") {
        "no application with this client id in the tenant: check AZURE_CLIENT_ID and AZURE_TENANT_ID".into()
    } else if has("AADSTS90002") || has("AADSTS900023") {
        "the tenant was not found: check AZURE_TENANT_ID (a GUID or domain) and, for a sovereign cloud, the authority host".into()
    } else if has("AADSTS500011") {
        format!(
            "the audience {scope} is not known in this tenant's cloud: set the audience to the endpoint's cloud \
             (Audience::AzureUsGovernment or AzureChina) and use that cloud's authority host"
        )
    } else if has("managed identity") || has("imds") || has("169.254.169.254") {
        "no managed identity answered (not on Azure, or none assigned to this resource): assign one, or set \
         AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET for a service principal, or run `az login` for development"
            .into()
    } else if has("az login") || has("azure cli") || has("azurecli") || has("developer") {
        "no developer login found: run `az login` (or `azd auth login`), or set a service principal's variables".into()
    } else if has("gave no token within") || has("timed out") || has("timeout") {
        "the token endpoint did not answer in time: check network access to the authority \
         (login.microsoftonline.com for the public cloud), a proxy (HTTPS_PROXY) or a firewall"
            .into()
    } else {
        "check the credential's settings: credential_from_env reads AZURE_TENANT_ID, AZURE_CLIENT_ID and \
         AZURE_CLIENT_SECRET (or AZURE_FEDERATED_TOKEN_FILE, or a managed identity, or `az login`)"
            .into()
    }
}

/// The cloud an endpoint's host name belongs to, by its suffix: `Some(scope)` when it is a
/// known sovereign or public cloud host.
pub(crate) fn cloud_scope_of(host: &str) -> Option<&'static str> {
    let host = host.to_ascii_lowercase();
    if host.ends_with(".azure.us") {
        Some("https://monitor.azure.us//.default")
    } else if host.ends_with(".azure.cn") {
        Some("https://monitor.azure.cn//.default")
    } else if host.ends_with(".azure.com") {
        Some("https://monitor.azure.com//.default")
    } else {
        None
    }
}

/// The finding and hint for a request that got no answer, from its error text.
pub(crate) fn connection_problem(error: &str, timed_out: bool, endpoint: &str) -> (Finding, String) {
    let e = error.to_ascii_lowercase();
    let proxy = ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|p| !p.is_empty()));
    if timed_out {
        return (
            Finding::Timeout,
            "no answer in time: a firewall that drops packets, a proxy that is needed (HTTPS_PROXY) or a slow network"
                .into(),
        );
    }
    if e.contains("proxy") {
        let hint = match &proxy {
            Some(p) => format!("the proxy {p} failed the request: check it, or exclude the endpoint with NO_PROXY"),
            None => "a proxy failed the request: check its settings (HTTPS_PROXY, NO_PROXY)".into(),
        };
        return (Finding::Proxy, hint);
    }
    if e.contains("dns")
        || e.contains("lookup address")
        || e.contains("name or service not known")
        || e.contains("no such host")
    {
        return (
            Finding::Dns,
            format!(
                "the host name of {endpoint} does not resolve: copy the endpoint from the rule's \
                 endpoints.logsIngestion (or the DCE's), and check DNS (a private link zone for private endpoints)"
            ),
        );
    }
    if e.contains("certificate")
        || e.contains("tls")
        || e.contains("handshake")
        || e.contains("ssl")
        || e.contains("corrupt message")
    {
        return (
            Finding::Tls,
            "the TLS handshake failed: a proxy or firewall that inspects TLS needs its CA trusted (give the builder an \
             http_client that trusts it), or the endpoint is not the service (check the URL and that it is https)"
                .into(),
        );
    }
    if e.contains("connection refused") {
        return (
            Finding::ConnectionRefused,
            format!("nothing listens at {endpoint}: check the host and port of the endpoint"),
        );
    }
    let hint = match proxy {
        Some(p) => format!("the endpoint could not be reached through the proxy {p}: check the proxy and NO_PROXY"),
        None => "the endpoint could not be reached: check the URL, the network and any firewall".into(),
    };
    (Finding::Unreachable, hint)
}

/// The verdict, finding and hint for the service's answer to an upload of `[]`.
pub(crate) fn upload_problem(status: u16, message: &str, rule_id: &str, stream: &str) -> (Verdict, Finding, String) {
    let m = message.to_ascii_lowercase();
    match status {
        401 => (
            Verdict::Fail,
            Finding::Unauthorized,
            "the token was refused (also a fresh one): the audience must match the endpoint's cloud (public \
             monitor.azure.com, US Government .us, China .cn: set the builder's audience), and the credential must \
             be for the tenant of the rule"
                .into(),
        ),
        403 if m.contains("isrbacpresent: false") => (
            Verdict::Fail,
            Finding::RoleMissing,
            format!(
                "the identity has no role on the rule: grant it 'Monitoring Metrics Publisher' \
                 (role id {}) on the data collection rule of {rule_id} (az role assignment create \
                 --assignee-object-id <id> --role {} --scope <the rule's resource id>). A new assignment \
                 can take up to 30 minutes to apply: 403 until then; check again later",
                crate::provision::PUBLISHER_ROLE_ID,
                crate::provision::PUBLISHER_ROLE_ID
            ),
        ),
        403 => (
            Verdict::Fail,
            Finding::Forbidden,
            "access denied although no missing role was reported: check that 'Monitoring Metrics Publisher' is \
             assigned on this rule to this identity, that a DCE endpoint is the one the rule names \
             (IsDcrDceBindingValid), and allow up to 30 minutes after a change"
                .into(),
        ),
        404 if m.contains("stream") => (
            Verdict::Fail,
            Finding::StreamNotFound,
            format!(
                "the rule does not declare stream {stream}: use a name from its streamDeclarations \
                 (Custom-..., case-sensitive), or add the stream to the rule"
            ),
        ),
        404 if m.contains("rule") || m.contains("immutable") => (
            Verdict::Fail,
            Finding::RuleNotFound,
            format!(
                "no rule {rule_id} at this endpoint: use the rule's immutableId (dcr-..., from properties.immutableId, \
                 not its name), and an endpoint in the rule's region (its endpoints.logsIngestion, or a DCE in the same region)"
            ),
        ),
        404 => (
            Verdict::Fail,
            Finding::NotFound,
            format!(
                "check the rule's immutable id ({rule_id}: dcr-...), the stream name ({stream}, as declared in the rule) \
                 and that the endpoint is in the rule's region"
            ),
        ),
        400 => (
            Verdict::Fail,
            Finding::BadRequest,
            "the service could not read the request: a proxy that rewrites requests, or an endpoint that is not the \
             Logs Ingestion API (check the URL)"
                .into(),
        ),
        413 => (
            Verdict::Fail,
            Finding::TooLarge,
            "an empty upload was refused as too large: something between here and the service (a proxy or gateway) \
             limits bodies; the service's own limit is 1 MiB, which the crate never exceeds"
                .into(),
        ),
        429 => (
            Verdict::Warn,
            Finding::Throttled,
            "the rule is throttled now (12,000 requests or 2 GB per minute per rule): the settings work, and the \
             pipeline waits as told by Retry-After"
                .into(),
        ),
        500..=599 => (
            Verdict::Fail,
            Finding::Unavailable,
            "the service is unavailable; a 503 can also mean the identity lacks the 'Monitoring Metrics Publisher' \
             role on the rule (the service's troubleshooting guide): check the role, allow up to 30 minutes after \
             granting it, then check again"
                .into(),
        ),
        _ => (
            Verdict::Fail,
            Finding::Unexpected,
            "an answer the Logs Ingestion API does not give: check that the endpoint is the service's".into(),
        ),
    }
}
