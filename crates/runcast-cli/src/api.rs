//! Connections to the services and the token they are called with.

use crate::CliError;
use crate::cli::Global;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use runcast_contract::client::Bearer;
use runcast_contract::v1::agent_service_client::AgentServiceClient;
use runcast_contract::v1::execution_service_client::ExecutionServiceClient;
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub type Executions = ExecutionServiceClient<InterceptedService<Channel, Bearer>>;
pub type Agents = AgentServiceClient<InterceptedService<Channel, Bearer>>;

/// A development token for `tenant` with `roles`, signed with `secret`.
pub fn mint(secret: &str, tenant: &str, roles: &[&str], sub: &str, ttl: Duration) -> Result<String, CliError> {
    let exp = chrono::Utc::now().timestamp() + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2);
    let claims = serde_json::json!({"sub": sub, "tenant": tenant, "roles": roles, "exp": exp});
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes()))
        .map_err(|err| CliError(format!("cannot sign a token: {err}")))
}

/// `--token`, or an admin development token minted from RUNCAST_JWT_SECRET.
pub fn token(global: &Global) -> Result<String, CliError> {
    if let Some(token) = &global.token {
        return Ok(token.clone());
    }
    match &global.jwt_secret {
        Some(secret) => mint(secret, &global.tenant, &["admin"], "runcast-cli", Duration::from_secs(3600)),
        None => Err(CliError(
            "no credentials: pass --token (or RUNCAST_TOKEN), or set RUNCAST_JWT_SECRET to mint one".into(),
        )),
    }
}

async fn channel(global: &Global) -> Result<Channel, CliError> {
    let endpoint = Channel::from_shared(global.api_url.clone())
        .map_err(|err| CliError(format!("--api-url {:?} is not a URL: {err}", global.api_url)))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(30));
    endpoint
        .connect()
        .await
        .map_err(|err| CliError(format!("cannot reach execution-api at {}: {}", global.api_url, source_chain(&err))))
}

pub async fn executions(global: &Global) -> Result<Executions, CliError> {
    let bearer = Bearer::new(Some(&token(global)?)).map_err(CliError)?;
    Ok(ExecutionServiceClient::with_interceptor(channel(global).await?, bearer))
}

pub async fn agents(global: &Global) -> Result<Agents, CliError> {
    let bearer = Bearer::new(Some(&token(global)?)).map_err(CliError)?;
    Ok(AgentServiceClient::with_interceptor(channel(global).await?, bearer))
}

/// "transport error: connection refused" rather than only "transport error".
pub fn source_chain(err: &dyn std::error::Error) -> String {
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
