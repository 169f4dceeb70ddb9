//! Connections to the services and the token they are called with.

use crate::CliError;
use crate::cli::Global;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use runcast_contract::client::Bearer;
use runcast_contract::v1::agent_service_client::AgentServiceClient;
use runcast_contract::v1::execution_service_client::ExecutionServiceClient;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub(crate) type Executions = ExecutionServiceClient<InterceptedService<Channel, Credentials>>;
pub(crate) type Agents = AgentServiceClient<InterceptedService<Channel, Credentials>>;

/// A development token for `tenant` with `roles`, signed with `secret`.
pub(crate) fn mint(secret: &str, tenant: &str, roles: &[&str], sub: &str, ttl: Duration) -> Result<String, CliError> {
    let exp = chrono::Utc::now().timestamp() + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2);
    let claims = serde_json::json!({"sub": sub, "tenant": tenant, "roles": roles, "exp": exp});
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes()))
        .map_err(|err| CliError::failed(format!("cannot sign a token: {err}")))
}

/// What the CLI authenticates with: `--token` as given, or admin development tokens minted from
/// RUNCAST_JWT_SECRET and minted again once half their life is gone, so that a long `simulate` or
/// `watch` outlives any one token.
#[derive(Clone)]
pub(crate) struct Credentials(Arc<Mutex<Current>>);

struct Current {
    token: String,
    /// Set when the token is minted here: how to mint the next one and when.
    minter: Option<Minter>,
}

struct Minter {
    secret: String,
    tenant: String,
    ttl: Duration,
    renew_at: Instant,
}

impl Credentials {
    pub(crate) fn new(global: &Global) -> Result<Self, CliError> {
        let current = match (&global.token, &global.jwt_secret) {
            (Some(token), _) => Current { token: token.clone(), minter: None },
            (None, Some(_)) if global.token_ttl < Duration::from_secs(2) => {
                return Err(CliError::usage(format!("--token-ttl {:?} is too short: at least 2s", global.token_ttl)));
            }
            (None, Some(secret)) => Current {
                token: String::new(),
                minter: Some(Minter {
                    secret: secret.clone(),
                    tenant: global.tenant.clone(),
                    ttl: global.token_ttl,
                    renew_at: Instant::now(),
                }),
            },
            (None, None) => {
                return Err(CliError::usage(
                    "no credentials: pass --token (or RUNCAST_TOKEN), or set RUNCAST_JWT_SECRET to mint one",
                ));
            }
        };
        let credentials = Self(Arc::new(Mutex::new(current)));
        credentials.token()?; // a secret that cannot sign fails here, not on the first call
        Ok(credentials)
    }

    /// The token to send now.
    pub(crate) fn token(&self) -> Result<String, CliError> {
        let mut current = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let Current { token, minter } = &mut *current;
        if let Some(minter) = minter
            && Instant::now() >= minter.renew_at
        {
            *token = mint(&minter.secret, &minter.tenant, &["admin"], "runcast-cli", minter.ttl)?;
            minter.renew_at = Instant::now() + minter.ttl / 2;
        }
        Ok(token.clone())
    }

    /// When a live connection should send a fresh token (`None`: the token is not ours to renew).
    pub(crate) fn renew_at(&self) -> Option<Instant> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).minter.as_ref().map(|minter| minter.renew_at)
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let token = self.token().map_err(|err| tonic::Status::unauthenticated(err.message().to_owned()))?;
        Bearer::new(Some(&token)).map_err(tonic::Status::unauthenticated)?.call(request)
    }
}

async fn channel(global: &Global) -> Result<Channel, CliError> {
    let endpoint = Channel::from_shared(global.api_url.clone())
        .map_err(|err| CliError::usage(format!("--api-url {:?} is not a URL: {err}", global.api_url)))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(30));
    endpoint.connect().await.map_err(|err| {
        CliError::unavailable(format!("cannot reach execution-api at {}: {}", global.api_url, source_chain(&err)))
    })
}

pub(crate) async fn executions(global: &Global) -> Result<Executions, CliError> {
    let credentials = Credentials::new(global)?;
    Ok(ExecutionServiceClient::with_interceptor(channel(global).await?, credentials))
}

pub(crate) async fn agents(global: &Global) -> Result<Agents, CliError> {
    let credentials = Credentials::new(global)?;
    Ok(AgentServiceClient::with_interceptor(channel(global).await?, credentials))
}

/// "transport error: connection refused" rather than only "transport error".
pub(crate) fn source_chain(err: &dyn std::error::Error) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // Layers often repeat their cause's words; say each thing once.
        if !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Built directly, not parsed: RUNCAST_* variables of the environment must not leak in.
    fn global(token: Option<&str>, secret: Option<&str>, ttl: Duration) -> Global {
        Global {
            api_url: "http://127.0.0.1:1".into(),
            gateway_url: "ws://127.0.0.1:1".into(),
            token: token.map(str::to_owned),
            jwt_secret: secret.map(str::to_owned),
            token_ttl: ttl,
            tenant: "t1".into(),
            json: false,
        }
    }

    fn claims(token: &str) -> serde_json::Value {
        let mut validation = jsonwebtoken::Validation::new(Algorithm::HS256);
        validation.validate_exp = false;
        let key = jsonwebtoken::DecodingKey::from_secret(b"s3cret");
        jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation).expect("our own token").claims
    }

    #[test]
    fn minted_tokens_carry_the_tenant_and_are_renewed_after_half_their_life() {
        let credentials =
            Credentials::new(&global(None, Some("s3cret"), Duration::from_secs(600))).expect("credentials");
        let first = credentials.token().expect("token");
        let claims = claims(&first);
        assert_eq!(claims["tenant"], "t1");
        let lifetime = claims["exp"].as_i64().expect("exp") - chrono::Utc::now().timestamp();
        assert!((590..=600).contains(&lifetime), "exp {lifetime}s away");
        let renew_at = credentials.renew_at().expect("ours to renew");
        let half = renew_at.duration_since(Instant::now());
        assert!(half > Duration::from_secs(290) && half <= Duration::from_secs(300), "{half:?}");
        assert_eq!(credentials.token().expect("token"), first, "not renewed before its time");

        // Past the renewal time: a new token, and the next renewal moves on.
        credentials.0.lock().expect("lock").minter.as_mut().expect("minter").renew_at = Instant::now();
        credentials.token().expect("token");
        assert!(credentials.renew_at().expect("ours") > renew_at - Duration::from_secs(1));
        assert!(credentials.renew_at().expect("ours") > Instant::now() + Duration::from_secs(290));
    }

    #[test]
    fn a_given_token_is_used_as_is_and_never_renewed() {
        let credentials =
            Credentials::new(&global(Some("abc.def.ghi"), Some("s3cret"), Duration::from_secs(600))).expect("ok");
        assert_eq!(credentials.token().expect("token"), "abc.def.ghi");
        assert_eq!(credentials.renew_at(), None);
    }

    #[test]
    fn no_credentials_or_a_too_short_lifetime_is_a_clear_error() {
        let none = Credentials::new(&global(None, None, Duration::from_secs(600))).err().expect("refused");
        assert!(none.message().contains("no credentials"), "{}", none.message());
        let short = Credentials::new(&global(None, Some("s"), Duration::from_secs(1))).err().expect("refused");
        assert!(short.message().contains("--token-ttl"), "{}", short.message());
    }
}
