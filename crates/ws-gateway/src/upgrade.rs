//! The server side of the WebSocket opening handshake (RFC 6455 §4.2) for `/ws`. The gateway does
//! it itself rather than through axum's `WebSocketUpgrade` because axum builds the socket under
//! the WebSocket out of reach, and the gateway's must be its own (see [`crate::ws_wire`]).
//! The checks and the answers are the same as axum's.

use axum::body::Body;
use axum::http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL, UPGRADE,
};
use axum::http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Why a request to `/ws` is no WebSocket handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NotAHandshake {
    #[error("a WebSocket handshake is a GET request")]
    MethodNotGet,
    #[error("the `Connection` header does not include `upgrade`")]
    ConnectionHeader,
    #[error("the `Upgrade` header is not `websocket`")]
    UpgradeHeader,
    #[error("the `Sec-WebSocket-Version` header is not `13`")]
    VersionHeader,
    #[error("the `Sec-WebSocket-Key` header is missing")]
    KeyHeader,
    #[error("this connection cannot be upgraded (an HTTP/1.1 connection is needed)")]
    NotUpgradable,
}

impl NotAHandshake {
    pub(crate) fn status(self) -> StatusCode {
        match self {
            Self::MethodNotGet => StatusCode::METHOD_NOT_ALLOWED,
            Self::NotUpgradable => StatusCode::UPGRADE_REQUIRED,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// A valid handshake: what the 101 answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Handshake {
    accept: String,
    /// The first of the server's `subprotocols` that the client offered, if any.
    pub(crate) subprotocol: Option<&'static str>,
    /// The `permessage-deflate` answer, when compression is on and the client offered it.
    pub(crate) deflate: Option<HeaderValue>,
}

/// Checks an HTTP/1.1 upgrade request and picks the subprotocol, in the server's order of
/// preference, and compression when `compression` allows it.
pub(crate) fn check(
    method: &Method,
    headers: &HeaderMap,
    subprotocols: &[&'static str],
    compression: bool,
) -> Result<Handshake, NotAHandshake> {
    if method != Method::GET {
        return Err(NotAHandshake::MethodNotGet);
    }
    if !header_tokens(headers, CONNECTION).any(|token| token.eq_ignore_ascii_case(b"upgrade")) {
        return Err(NotAHandshake::ConnectionHeader);
    }
    if !headers.get(UPGRADE).is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"websocket")) {
        return Err(NotAHandshake::UpgradeHeader);
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).is_none_or(|value| value.as_bytes() != b"13") {
        return Err(NotAHandshake::VersionHeader);
    }
    let key = headers.get(SEC_WEBSOCKET_KEY).ok_or(NotAHandshake::KeyHeader)?;
    let subprotocol = subprotocols
        .iter()
        .find(|wanted| header_tokens(headers, SEC_WEBSOCKET_PROTOCOL).any(|offered| offered == wanted.as_bytes()))
        .copied();
    let deflate = if compression { crate::permessage_deflate::negotiate(headers) } else { None };
    Ok(Handshake { accept: derive_accept_key(key.as_bytes()), subprotocol, deflate })
}

impl Handshake {
    /// The 101 that switches the connection to WebSocket.
    pub(crate) fn switching_protocols(&self) -> Response<Body> {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        // Base64: always a valid header value.
        if let Ok(accept) = HeaderValue::from_str(&self.accept) {
            headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
        }
        if let Some(subprotocol) = self.subprotocol {
            headers.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(subprotocol));
        }
        if let Some(deflate) = &self.deflate {
            headers.insert(SEC_WEBSOCKET_EXTENSIONS, deflate.clone());
        }
        response
    }
}

/// The comma-separated tokens of every value of a header, trimmed.
fn header_tokens(headers: &HeaderMap, name: header::HeaderName) -> impl Iterator<Item = &[u8]> {
    headers.get_all(name).into_iter().flat_map(|value| value.as_bytes().split(|&b| b == b',')).map(<[u8]>::trim_ascii)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROTOCOLS: [&str; 2] = ["runcast.v1.json", "runcast.v1.proto"];

    fn handshake_headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
            ("sec-websocket-version", "13"),
            // RFC 6455 §1.3's example.
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]
        .into_iter()
        .chain(pairs.iter().copied())
        {
            headers.insert(name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn a_valid_handshake_is_answered_with_the_rfc_accept_key() {
        let handshake = check(&Method::GET, &handshake_headers(&[]), &PROTOCOLS, true).expect("valid");
        let response = handshake.switching_protocols();
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(response.headers()[SEC_WEBSOCKET_ACCEPT], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(response.headers()[UPGRADE], "websocket");
        assert!(response.headers().get(SEC_WEBSOCKET_PROTOCOL).is_none(), "none offered, none chosen");
    }

    #[test]
    fn the_subprotocol_is_the_servers_first_choice_among_those_offered() {
        let offered =
            |value| check(&Method::GET, &handshake_headers(&[("sec-websocket-protocol", value)]), &PROTOCOLS, true);
        assert_eq!(offered("runcast.v1.proto").expect("valid").subprotocol, Some("runcast.v1.proto"));
        assert_eq!(
            offered("x, runcast.v1.proto ,runcast.v1.json").expect("valid").subprotocol,
            Some("runcast.v1.json")
        );
        assert_eq!(offered("graphql-ws").expect("valid").subprotocol, None);
        let chosen = offered("runcast.v1.proto").expect("valid").switching_protocols();
        assert_eq!(chosen.headers()[SEC_WEBSOCKET_PROTOCOL], "runcast.v1.proto");
    }

    #[test]
    fn compression_is_answered_only_when_offered_and_allowed() {
        let offer = [("sec-websocket-extensions", "permessage-deflate; client_max_window_bits")];
        let answered = check(&Method::GET, &handshake_headers(&offer), &PROTOCOLS, true).expect("valid");
        assert_eq!(
            answered.switching_protocols().headers()[SEC_WEBSOCKET_EXTENSIONS],
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        let off = check(&Method::GET, &handshake_headers(&offer), &PROTOCOLS, false).expect("valid");
        assert!(off.deflate.is_none(), "compression turned off");
        assert!(off.switching_protocols().headers().get(SEC_WEBSOCKET_EXTENSIONS).is_none());
        let unoffered = check(&Method::GET, &handshake_headers(&[]), &PROTOCOLS, true).expect("valid");
        assert!(unoffered.switching_protocols().headers().get(SEC_WEBSOCKET_EXTENSIONS).is_none());
    }

    #[test]
    fn each_missing_or_wrong_header_is_named() {
        let with = |pairs| check(&Method::GET, &handshake_headers(pairs), &PROTOCOLS, true).map(|_| ());
        assert_eq!(with(&[("connection", "keep-alive")]), Err(NotAHandshake::ConnectionHeader));
        assert_eq!(with(&[("upgrade", "h2c")]), Err(NotAHandshake::UpgradeHeader));
        assert_eq!(with(&[("sec-websocket-version", "8")]), Err(NotAHandshake::VersionHeader));
        let mut no_key = handshake_headers(&[]);
        no_key.remove(SEC_WEBSOCKET_KEY);
        assert_eq!(check(&Method::GET, &no_key, &PROTOCOLS, true).map(|_| ()), Err(NotAHandshake::KeyHeader));
        assert_eq!(
            check(&Method::POST, &handshake_headers(&[]), &PROTOCOLS, true).map(|_| ()),
            Err(NotAHandshake::MethodNotGet)
        );
        assert_eq!(
            check(&Method::GET, &HeaderMap::new(), &PROTOCOLS, true).map(|_| ()),
            Err(NotAHandshake::ConnectionHeader)
        );
        assert_eq!(NotAHandshake::ConnectionHeader.status(), StatusCode::BAD_REQUEST);
        assert_eq!(NotAHandshake::NotUpgradable.status(), StatusCode::UPGRADE_REQUIRED);
    }
}
