//! Identity, the same in every service (DESIGN §5): JWT bearer tokens — HS256 from a shared secret
//! for development, RS256/ES256 from a PEM public key or a JWKS file for production — and API keys
//! from a file of SHA-256 hashes, all yielding a [`Principal`]: subject, tenant, roles.
//!
//! [`layer`] turns it into one axum/tower middleware that both the REST and the gRPC routers wear,
//! so handlers only ever see an authenticated [`Principal`] in the request extensions.

use crate::error::{Error, ErrorKind};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};
use runcast_contract::EntityId;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Roles of DESIGN §5. Every role may read its tenant's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Viewer,
    Submitter,
    Agent,
    Admin,
}

/// What a request wants to do; each API method maps to exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Get, list, watch, history, subscribe.
    Read,
    /// Create, cancel, pause, resume, resolve approvals.
    Submit,
    /// What agents report: status, steps, progress, logs, heartbeats, approval requests.
    Report,
    /// Destructive administration, e.g. `DELETE /events`.
    Administer,
}

impl Role {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "viewer" => Some(Self::Viewer),
            "submitter" => Some(Self::Submitter),
            "agent" => Some(Self::Agent),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    pub fn allows(self, action: Action) -> bool {
        matches!(
            (self, action),
            (Self::Admin, _) | (_, Action::Read) | (Self::Submitter, Action::Submit) | (Self::Agent, Action::Report)
        )
    }
}

/// Who is calling, after authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub tenant: EntityId,
    pub roles: Vec<Role>,
    /// Unix seconds; `None` for API keys, which do not expire.
    pub expires_at: Option<i64>,
}

impl Principal {
    pub fn can(&self, action: Action) -> bool {
        self.roles.iter().any(|role| role.allows(action))
    }

    pub fn require(&self, action: Action) -> Result<(), AuthError> {
        if self.can(action) {
            Ok(())
        } else {
            Err(AuthError::permission_denied(format!(
                "{} may not {}: needs one of the roles {}",
                self.subject,
                action.describe(),
                action.roles_allowed()
            )))
        }
    }
}

impl Action {
    fn describe(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Submit => "create or control executions",
            Self::Report => "report execution progress",
            Self::Administer => "administer",
        }
    }

    fn roles_allowed(self) -> &'static str {
        match self {
            Self::Read => "viewer, submitter, agent, admin",
            Self::Submit => "submitter, admin",
            Self::Report => "agent, admin",
            Self::Administer => "admin",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthErrorKind {
    /// No credentials, or credentials that do not verify (expired, garbled, wrong key).
    Unauthenticated,
    /// Valid credentials without the role the action needs.
    PermissionDenied,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AuthError {
    kind: AuthErrorKind,
    message: String,
}

impl AuthError {
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self { kind: AuthErrorKind::Unauthenticated, message: message.into() }
    }

    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self { kind: AuthErrorKind::PermissionDenied, message: message.into() }
    }

    pub fn kind(&self) -> AuthErrorKind {
        self.kind
    }

    /// The one place an authentication or authorization failure becomes a gRPC code, an HTTP
    /// status and the code name of the JSON error body.
    fn codes(&self) -> (u16, StatusCode, &'static str) {
        match self.kind {
            AuthErrorKind::Unauthenticated => (16, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"),
            AuthErrorKind::PermissionDenied => (7, StatusCode::FORBIDDEN, "PERMISSION_DENIED"),
        }
    }

    /// The refusal as a trailers-only gRPC error.
    pub fn into_grpc_response(self) -> Response {
        let (grpc_code, _, _) = self.codes();
        grpc_error(grpc_code, &self.message)
    }
}

/// The refusal as a JSON error with its HTTP status.
impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let (_, status, code) = self.codes();
        json_error(status, code, &self.message)
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct AuthArgs {
    /// Shared secret for HS256 tokens (development).
    #[arg(long, env = "RUNCAST_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// PEM public key (RSA for RS256, EC P-256 for ES256) that verifies tokens.
    #[arg(long, env = "RUNCAST_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,

    /// JWKS file (RS256/ES256 keys, chosen by `kid`) that verifies tokens.
    #[arg(long, env = "RUNCAST_JWT_JWKS_FILE")]
    pub jwt_jwks_file: Option<PathBuf>,

    /// JSON file of API keys: {"keys": [{"sha256": "<hex of the key>", "sub", "tenant", "roles"}]}.
    #[arg(long, env = "RUNCAST_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,

    /// Clock skew tolerated when checking `exp`, in seconds.
    #[arg(long, env = "RUNCAST_JWT_LEEWAY_SECONDS", default_value_t = 5)]
    pub jwt_leeway_seconds: u64,

    /// When set, tokens must name this audience in `aud`.
    #[arg(long, env = "RUNCAST_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// When set, tokens must be issued by this `iss`.
    #[arg(long, env = "RUNCAST_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
}

impl AuthArgs {
    /// Tokens signed with one shared HS256 secret, no leeway, no audience or issuer check.
    pub fn shared_secret(secret: &str) -> Self {
        Self {
            jwt_secret: Some(secret.to_owned()),
            jwt_public_key_file: None,
            jwt_jwks_file: None,
            api_keys_file: None,
            jwt_leeway_seconds: 0,
            jwt_audience: None,
            jwt_issuer: None,
        }
    }
}

/// A verification key and the algorithms it may verify.
struct TokenKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// Verifies credentials. Cheap to clone (shared inside an `Arc`).
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Keys>,
}

/// How many verified tokens an [`Authenticator`] remembers by default.
pub const VERIFIED_TOKENS: usize = 10_000;

struct Keys {
    tokens: Vec<TokenKey>,
    /// Tokens that verified, with their principal: a client sends the same token with every
    /// request, and checking its signature again cost the api 6 % of its CPU under load. The keys
    /// never change while the process runs, so only the expiry is checked again. `None`: every
    /// token is verified at every use.
    verified: Option<quick_cache::sync::Cache<String, Principal>>,
    api_keys: HashMap<[u8; 32], Principal>,
    leeway: u64,
    audience: Option<String>,
    issuer: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    tenant: String,
    #[serde(default)]
    roles: Vec<String>,
    exp: i64,
}

#[derive(Deserialize)]
struct ApiKeyFile {
    keys: Vec<ApiKeyEntry>,
}

#[derive(Deserialize)]
struct ApiKeyEntry {
    sha256: String,
    sub: String,
    tenant: String,
    roles: Vec<String>,
}

fn config_error(variable: &str, problem: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Config, format!("{variable}: {problem}"))
}

impl Authenticator {
    /// Loads every configured key, remembering up to [`VERIFIED_TOKENS`] verified tokens. At least
    /// one way to authenticate must be configured.
    pub fn from_args(args: &AuthArgs) -> Result<Self, Error> {
        Self::remembering(args, VERIFIED_TOKENS)
    }

    /// [`from_args`](Self::from_args), remembering up to `capacity` verified tokens (0: none) —
    /// worth it where a client sends the same token with many requests, a cost of ~0.4 KiB per
    /// token where each connection shows its token once.
    pub fn remembering(args: &AuthArgs, capacity: usize) -> Result<Self, Error> {
        let mut tokens = Vec::new();
        if let Some(secret) = args.jwt_secret.as_deref().filter(|s| !s.is_empty()) {
            tokens.push(TokenKey {
                kid: None,
                algorithm: Algorithm::HS256,
                key: DecodingKey::from_secret(secret.as_bytes()),
            });
        }
        if let Some(path) = &args.jwt_public_key_file {
            let pem = std::fs::read(path).map_err(|err| {
                config_error("RUNCAST_JWT_PUBLIC_KEY_FILE", format!("cannot read {}: {err}", path.display()))
            })?;
            let (algorithm, key) = if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                (Algorithm::RS256, key)
            } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                (Algorithm::ES256, key)
            } else {
                return Err(config_error(
                    "RUNCAST_JWT_PUBLIC_KEY_FILE",
                    format!("{} is neither an RSA nor an EC public key in PEM", path.display()),
                ));
            };
            tokens.push(TokenKey { kid: None, algorithm, key });
        }
        if let Some(path) = &args.jwt_jwks_file {
            let text = std::fs::read(path).map_err(|err| {
                config_error("RUNCAST_JWT_JWKS_FILE", format!("cannot read {}: {err}", path.display()))
            })?;
            let set: JwkSet = serde_json::from_slice(&text).map_err(|err| {
                config_error("RUNCAST_JWT_JWKS_FILE", format!("{} is not a JWKS document: {err}", path.display()))
            })?;
            for jwk in &set.keys {
                let key = DecodingKey::from_jwk(jwk)
                    .map_err(|err| config_error("RUNCAST_JWT_JWKS_FILE", format!("unusable key: {err}")))?;
                let algorithm = match &jwk.algorithm {
                    jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                    jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                    _ => {
                        return Err(config_error(
                            "RUNCAST_JWT_JWKS_FILE",
                            "only RSA (RS256) and EC (ES256) keys are supported",
                        ));
                    }
                };
                tokens.push(TokenKey { kid: jwk.common.key_id.clone(), algorithm, key });
            }
        }
        let mut api_keys = HashMap::new();
        if let Some(path) = &args.api_keys_file {
            let text = std::fs::read(path).map_err(|err| {
                config_error("RUNCAST_API_KEYS_FILE", format!("cannot read {}: {err}", path.display()))
            })?;
            let file: ApiKeyFile = serde_json::from_slice(&text)
                .map_err(|err| config_error("RUNCAST_API_KEYS_FILE", format!("{}: {err}", path.display())))?;
            for entry in file.keys {
                let mut hash = [0u8; 32];
                hex::decode_to_slice(entry.sha256.trim(), &mut hash).map_err(|err| {
                    config_error(
                        "RUNCAST_API_KEYS_FILE",
                        format!("sha256 of {} is not 64 hex digits: {err}", entry.sub),
                    )
                })?;
                let tenant = EntityId::parse("tenant", &entry.tenant)
                    .map_err(|err| config_error("RUNCAST_API_KEYS_FILE", err))?;
                api_keys.insert(
                    hash,
                    Principal { subject: entry.sub, tenant, roles: parse_roles(&entry.roles), expires_at: None },
                );
            }
        }
        if tokens.is_empty() && api_keys.is_empty() {
            return Err(config_error(
                "RUNCAST_JWT_SECRET",
                "no way to authenticate is configured: set RUNCAST_JWT_SECRET, RUNCAST_JWT_PUBLIC_KEY_FILE, RUNCAST_JWT_JWKS_FILE or RUNCAST_API_KEYS_FILE",
            ));
        }
        let non_empty = |value: &Option<String>| value.clone().filter(|value| !value.is_empty());
        Ok(Self {
            inner: Arc::new(Keys {
                tokens,
                verified: (capacity > 0).then(|| quick_cache::sync::Cache::new(capacity)),
                api_keys,
                leeway: args.jwt_leeway_seconds,
                audience: non_empty(&args.jwt_audience),
                issuer: non_empty(&args.jwt_issuer),
            }),
        })
    }

    /// Verifies a JWT: its signature once, its expiry at every use.
    pub fn verify_token(&self, token: &str) -> Result<Principal, AuthError> {
        let Some(verified) = &self.inner.verified else { return self.verify_signed_token(token) };
        if let Some(principal) = verified.get(token) {
            let now = i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap_or(i64::MAX);
            let leeway = i64::try_from(self.inner.leeway).unwrap_or(i64::MAX);
            if principal.expires_at.is_some_and(|exp| exp.saturating_add(leeway) >= now) {
                return Ok(principal);
            }
            verified.remove(token);
        }
        let principal = self.verify_signed_token(token)?;
        verified.insert(token.to_owned(), principal.clone());
        Ok(principal)
    }

    fn verify_signed_token(&self, token: &str) -> Result<Principal, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|err| AuthError::unauthenticated(format!("the bearer token is not a JWT: {err}")))?;
        let candidates: Vec<_> = self
            .inner
            .tokens
            .iter()
            .filter(|key| {
                key.algorithm == header.alg && (header.kid.is_none() || key.kid.is_none() || key.kid == header.kid)
            })
            .collect();
        if candidates.is_empty() {
            return Err(AuthError::unauthenticated(format!(
                "tokens signed with {:?} are not accepted here",
                header.alg
            )));
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.inner.leeway;
        let mut required = vec!["exp", "sub"];
        match &self.inner.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.inner.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        let mut last_error = None;
        for candidate in candidates {
            match jsonwebtoken::decode::<Claims>(token, &candidate.key, &validation) {
                Ok(data) => return principal_from_claims(data.claims),
                Err(err) => last_error = Some(err),
            }
        }
        let reason = match last_error.as_ref().map(jsonwebtoken::errors::Error::kind) {
            Some(jsonwebtoken::errors::ErrorKind::ExpiredSignature) => {
                "the token has expired: get a new one".to_owned()
            }
            Some(jsonwebtoken::errors::ErrorKind::InvalidSignature) => {
                "the token's signature does not verify with the configured keys".to_owned()
            }
            Some(jsonwebtoken::errors::ErrorKind::InvalidAudience) => {
                format!("the token's aud is not {:?}", self.inner.audience.as_deref().unwrap_or_default())
            }
            Some(jsonwebtoken::errors::ErrorKind::InvalidIssuer) => {
                format!("the token's iss is not {:?}", self.inner.issuer.as_deref().unwrap_or_default())
            }
            Some(jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(claim)) => {
                format!("the token has no {claim} claim, which this server requires")
            }
            Some(other) => format!("the token is invalid: {other:?}"),
            None => "the token is invalid".to_owned(),
        };
        Err(AuthError::unauthenticated(reason))
    }

    /// Looks an API key up by its SHA-256.
    pub fn verify_api_key(&self, key: &str) -> Result<Principal, AuthError> {
        let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        self.inner.api_keys.get(&hash).cloned().ok_or_else(|| AuthError::unauthenticated("unknown API key"))
    }

    /// `Authorization: Bearer <jwt>` or `X-API-Key: <key>`.
    pub fn authenticate_headers(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let value =
                value.to_str().map_err(|_| AuthError::unauthenticated("the Authorization header is not text"))?;
            let token = value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
                .ok_or_else(|| AuthError::unauthenticated("the Authorization header must be `Bearer <token>`"))?;
            return self.verify_token(token.trim());
        }
        if let Some(value) = headers.get("x-api-key") {
            let key = value.to_str().map_err(|_| AuthError::unauthenticated("the X-API-Key header is not text"))?;
            return self.verify_api_key(key.trim());
        }
        Err(AuthError::unauthenticated("no credentials: send `Authorization: Bearer <token>` or `X-API-Key: <key>`"))
    }
}

fn parse_roles(names: &[String]) -> Vec<Role> {
    // Unknown roles are ignored rather than refused, so an identity provider may add its own.
    names.iter().filter_map(|name| Role::parse(name)).collect()
}

fn principal_from_claims(claims: Claims) -> Result<Principal, AuthError> {
    let tenant = EntityId::parse("tenant", &claims.tenant)
        .map_err(|err| AuthError::unauthenticated(format!("the token's {err}")))?;
    Ok(Principal { subject: claims.sub, tenant, roles: parse_roles(&claims.roles), expires_at: Some(claims.exp) })
}

/// What a request needs, decided by a service's policy from its method and path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No credentials needed (health, reflection, the OpenAPI document).
    Public,
    /// An authenticated principal allowed to perform the action.
    Requires(Action),
}

/// A service's authorization table: one function from method and path to [`Access`], so every
/// rule of a service is in one place and no handler checks roles itself.
pub type Policy = fn(&axum::http::Method, &str) -> Access;

/// The middleware: authenticates the request, checks the policy's action, puts the [`Principal`]
/// in the request extensions, and refuses the rest — as a gRPC status for gRPC requests, as a JSON
/// error for everything else.
pub async fn layer(State(auth): State<AuthState>, mut request: Request, next: Next) -> Response {
    let action = match (auth.policy)(request.method(), request.uri().path()) {
        Access::Public => return next.run(request).await,
        Access::Requires(action) => action,
    };
    let verdict = auth
        .authenticator
        .authenticate_headers(request.headers())
        .and_then(|principal| principal.require(action).map(|()| principal));
    match verdict {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(err) if is_grpc(request.headers()) => err.into_grpc_response(),
        Err(err) => err.into_response(),
    }
}

/// State of [`layer`].
#[derive(Clone)]
pub struct AuthState {
    pub authenticator: Authenticator,
    pub policy: Policy,
}

pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/grpc"))
}

/// A trailers-only gRPC error response.
pub fn grpc_error(code: u16, message: &str) -> Response {
    let mut response = StatusCode::OK.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from(code));
    // grpc-message is percent-encoded; keep it to printable ASCII.
    let printable: String = message.chars().map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' }).collect();
    let encoded = printable.replace('%', "%25");
    if let Ok(value) = HeaderValue::from_str(&encoded) {
        headers.insert("grpc-message", value);
    }
    response
}

/// `{"error": {"code": "...", "message": "..."}}` with `status`.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": { "code": code, "message": message } }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};

    const SECRET: &str = "test-secret";

    #[test]
    fn each_kind_maps_to_its_grpc_code_and_http_status() {
        for (err, grpc, http) in [
            (AuthError::unauthenticated("who?"), "16", StatusCode::UNAUTHORIZED),
            (AuthError::permission_denied("no"), "7", StatusCode::FORBIDDEN),
        ] {
            assert_eq!(err.clone().into_response().status(), http);
            let response = err.into_grpc_response();
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers().get("grpc-status").and_then(|v| v.to_str().ok()), Some(grpc));
        }
    }

    fn authenticator() -> Authenticator {
        Authenticator::from_args(&AuthArgs::shared_secret(SECRET)).expect("configured")
    }

    fn token(secret: &str, tenant: &str, roles: &[&str], exp_in: i64) -> String {
        runcast_testkit::token::token(secret, "alice", tenant, roles, exp_in)
    }

    #[test]
    fn role_matrix() {
        use Action::*;
        use Role::*;
        let allowed =
            |role: Role| [Read, Submit, Report, Administer].into_iter().filter(|a| role.allows(*a)).collect::<Vec<_>>();
        assert_eq!(allowed(Viewer), [Read]);
        assert_eq!(allowed(Submitter), [Read, Submit]);
        assert_eq!(allowed(Agent), [Read, Report]);
        assert_eq!(allowed(Admin), [Read, Submit, Report, Administer]);
    }

    #[test]
    fn a_valid_token_yields_its_principal() {
        let principal =
            authenticator().verify_token(&token(SECRET, "acme", &["submitter", "custom"], 60)).expect("valid");
        assert_eq!(principal.subject, "alice");
        assert_eq!(principal.tenant.as_str(), "acme");
        assert_eq!(principal.roles, [Role::Submitter]);
        assert!(principal.require(Action::Submit).is_ok());
        let denied = principal.require(Action::Administer).expect_err("not admin");
        assert_eq!(denied.kind(), AuthErrorKind::PermissionDenied);
        assert!(denied.to_string().contains("admin"), "{denied}");
    }

    #[test]
    fn bad_tokens_are_unauthenticated_with_a_reason() {
        let auth = authenticator();
        let cases = [
            (token(SECRET, "acme", &["viewer"], -30), "expired"),
            (token("other-secret", "acme", &["viewer"], 60), "signature"),
            ("not.a.jwt".to_owned(), "not a JWT"),
            (token(SECRET, "ac.me", &["viewer"], 60), "tenant"),
        ];
        for (token, reason) in cases {
            let err = auth.verify_token(&token).expect_err(reason);
            assert_eq!(err.kind(), AuthErrorKind::Unauthenticated);
            assert!(err.to_string().contains(reason), "{err} should mention {reason}");
        }
    }

    #[test]
    fn a_remembered_token_is_refused_once_it_expires() {
        let auth = authenticator();
        let token = token(SECRET, "acme", &["viewer"], 1);
        let principal = auth.verify_token(&token).expect("valid");
        assert_eq!(auth.verify_token(&token).expect("remembered"), principal);
        let expires_at = principal.expires_at.and_then(|exp| u64::try_from(exp).ok()).expect("exp");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while jsonwebtoken::get_current_timestamp() <= expires_at {
            assert!(std::time::Instant::now() < deadline, "the clock did not pass the token's exp");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let err = auth.verify_token(&token).expect_err("expired (no leeway)");
        assert!(err.to_string().contains("expired"), "{err}");
    }

    #[test]
    fn an_authenticator_that_remembers_nothing_verifies_every_use() {
        let auth = Authenticator::remembering(&AuthArgs::shared_secret(SECRET), 0).expect("configured");
        let valid = token(SECRET, "acme", &["viewer"], 60);
        let principal = auth.verify_token(&valid).expect("valid");
        assert_eq!(auth.verify_token(&valid).expect("valid again"), principal);
        let forged = token(&format!("{SECRET}-other"), "acme", &["admin"], 60);
        let err = auth.verify_token(&forged).expect_err("another key's signature");
        assert!(err.to_string().contains("signature"), "{err}");
    }

    #[test]
    fn headers_bearer_and_api_keys() {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = "rk_live_0123456789";
        let file = dir.path().join("keys.json");
        let hash = hex::encode(Sha256::digest(key.as_bytes()));
        std::fs::write(
            &file,
            serde_json::json!({"keys": [{"sha256": hash, "sub": "ci", "tenant": "acme", "roles": ["agent"]}]})
                .to_string(),
        )
        .expect("write");
        let auth = Authenticator::from_args(&AuthArgs { api_keys_file: Some(file), ..AuthArgs::shared_secret(SECRET) })
            .expect("configured");

        let mut headers = HeaderMap::new();
        assert!(auth.authenticate_headers(&headers).expect_err("none").to_string().contains("no credentials"));
        headers.insert("x-api-key", HeaderValue::from_static("rk_live_0123456789"));
        let principal = auth.authenticate_headers(&headers).expect("api key");
        assert_eq!((principal.subject.as_str(), principal.roles.as_slice()), ("ci", [Role::Agent].as_slice()));
        headers.insert("x-api-key", HeaderValue::from_static("wrong"));
        assert!(auth.authenticate_headers(&headers).is_err());

        let mut headers = HeaderMap::new();
        let bearer = format!("Bearer {}", token(SECRET, "acme", &["viewer"], 60));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(&bearer).expect("header"));
        assert_eq!(auth.authenticate_headers(&headers).expect("bearer").roles, [Role::Viewer]);
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert!(auth.authenticate_headers(&headers).expect_err("basic").to_string().contains("Bearer"));
    }

    #[test]
    fn nothing_configured_is_a_configuration_error() {
        let err = Authenticator::from_args(&AuthArgs {
            jwt_secret: None,
            jwt_public_key_file: None,
            jwt_jwks_file: None,
            api_keys_file: None,
            jwt_leeway_seconds: 5,
            jwt_audience: None,
            jwt_issuer: None,
        })
        .err()
        .expect("refused");
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("RUNCAST_JWT_SECRET"));
    }

    fn testdata(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata").join(name)
    }

    fn signed(algorithm: Algorithm, private_pem: &str, kid: Option<&str>) -> String {
        let pem = std::fs::read(testdata(private_pem)).expect("fixture");
        let key = match algorithm {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
            _ => EncodingKey::from_ec_pem(&pem),
        }
        .expect("private key");
        let mut header = Header::new(algorithm);
        header.kid = kid.map(str::to_owned);
        let claims = serde_json::json!({"sub": "svc", "tenant": "acme", "roles": ["agent"], "exp": runcast_testkit::token::now() + 60});
        encode(&header, &claims, &key).expect("signs")
    }

    fn with_files(public_key: Option<&str>, jwks: Option<&str>) -> Authenticator {
        Authenticator::from_args(&AuthArgs {
            jwt_secret: None,
            jwt_public_key_file: public_key.map(testdata),
            jwt_jwks_file: jwks.map(testdata),
            ..AuthArgs::shared_secret("")
        })
        .expect("configured")
    }

    #[test]
    fn rs256_and_es256_tokens_verify_with_pem_public_keys() {
        let rsa = with_files(Some("rsa_public.pem"), None);
        assert_eq!(rsa.verify_token(&signed(Algorithm::RS256, "rsa_private.pem", None)).expect("rs256").subject, "svc");
        let err = rsa.verify_token(&signed(Algorithm::ES256, "ec_private.pem", None)).expect_err("wrong algorithm");
        assert!(err.to_string().contains("ES256"), "{err}");

        let ec = with_files(Some("ec_public.pem"), None);
        assert_eq!(
            ec.verify_token(&signed(Algorithm::ES256, "ec_private.pem", None)).expect("es256").roles,
            [Role::Agent]
        );
        // An HS256 token signed with the public key as secret (the classic confusion attack) fails.
        let public = std::fs::read(testdata("ec_public.pem")).expect("fixture");
        let forged = encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "x", "tenant": "acme", "roles": ["admin"], "exp": runcast_testkit::token::now() + 60}),
            &EncodingKey::from_secret(&public),
        )
        .expect("encodes");
        assert!(ec.verify_token(&forged).is_err());
    }

    #[test]
    fn jwks_keys_are_chosen_by_kid() {
        let auth = with_files(None, Some("jwks.json"));
        assert!(auth.verify_token(&signed(Algorithm::RS256, "rsa_private.pem", Some("test-rsa-1"))).is_ok());
        assert!(auth.verify_token(&signed(Algorithm::RS256, "rsa_private.pem", Some("rotated-away"))).is_err());
    }

    #[test]
    fn audience_and_issuer_are_checked_when_configured() {
        let auth = Authenticator::from_args(&AuthArgs {
            jwt_audience: Some("runcast".into()),
            jwt_issuer: Some("https://login.example".into()),
            ..AuthArgs::shared_secret(SECRET)
        })
        .expect("configured");
        let signed = |extra: serde_json::Value| {
            let mut claims = serde_json::json!({"sub": "alice", "tenant": "acme", "roles": ["viewer"], "exp": runcast_testkit::token::now() + 60});
            if let (Some(claims), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
                claims.extend(extra.clone());
            }
            runcast_testkit::token::sign(SECRET, &claims)
        };
        let good = signed(serde_json::json!({"aud": "runcast", "iss": "https://login.example"}));
        assert_eq!(auth.verify_token(&good).expect("valid").tenant.as_str(), "acme");
        let cases = [
            (serde_json::json!({"aud": "other", "iss": "https://login.example"}), "aud is not"),
            (serde_json::json!({"aud": "runcast", "iss": "https://evil.example"}), "iss is not"),
            (serde_json::json!({"iss": "https://login.example"}), "no aud claim"),
            (serde_json::json!({"aud": "runcast"}), "no iss claim"),
        ];
        for (claims, expected) in cases {
            let err = auth.verify_token(&signed(claims.clone())).expect_err("refused");
            assert_eq!(err.kind(), AuthErrorKind::Unauthenticated);
            assert!(err.to_string().contains(expected), "{claims}: {err}");
        }
        // Without the settings, aud and iss are not looked at.
        let token = signed(serde_json::json!({"aud": "anything", "iss": "anyone"}));
        assert!(authenticator().verify_token(&token).is_ok());
    }
}
