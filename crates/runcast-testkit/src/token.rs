//! Tokens as the services verify them: HS256 JWTs signed with the secret a test configured.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, as a JWT's `exp` counts them.
pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A token for `subject` of `tenant` with `roles`, expiring `expires_in` seconds from now
/// (negative: already expired).
pub fn token(secret: &str, subject: &str, tenant: &str, roles: &[&str], expires_in: i64) -> String {
    sign(secret, &serde_json::json!({"sub": subject, "tenant": tenant, "roles": roles, "exp": now() + expires_in}))
}

/// Any claims signed with HS256: for the tests of audience, issuer and malformed claims.
pub fn sign(secret: &str, claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("the token encodes")
}
