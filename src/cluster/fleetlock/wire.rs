//! The FleetLock protocol on the wire: one bounded HTTP/1.1 request in, one answer out.
//!
//! Pure: bytes in, a [`Request`] or a [`Rejection`] out, and the answer's bytes. The protocol
//! (Zincati's `docs/development/fleetlock/protocol.md`): `POST <base>/v1/pre-reboot` takes a
//! reboot slot, `POST <base>/v1/steady-state` gives it back; the header `fleet-lock-protocol:
//! true` is required (a request that lost it to a redirect is not meant for us); the body is
//! `{"client_params":{"id":…,"group":…}}`, both non-empty, the group matching
//! `^[a-zA-Z0-9.-]+$`; success is 200, anything else a failure whose body is `{"kind","value"}`
//! — `kind` one of the few constants in [`Kind`] (Zincati counts them in a metric, so the set
//! must stay small), `value` one line for the admin.
//!
//! Bounds, since anyone who reaches the port can send anything: the head is at most
//! [`MAX_HEAD`] bytes, the body at most [`MAX_BODY`] and must come with a `Content-Length`
//! (chunked bodies are refused: 411); the server reads the whole request within its deadline
//! (`server.rs`) and closes the connection after one answer.

use serde::Deserialize;
use serde_json::json;

/// The longest request head (request line and headers) read.
pub const MAX_HEAD: usize = 8 << 10;
/// The longest body read: a real one is well under 200 bytes.
pub const MAX_BODY: usize = 4 << 10;

/// The two operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `RecursiveLock`: `/v1/pre-reboot`.
    PreReboot,
    /// `UnlockIfHeld`: `/v1/steady-state`.
    SteadyState,
}

impl Op {
    pub fn path(self) -> &'static str {
        match self {
            Op::PreReboot => "/v1/pre-reboot",
            Op::SteadyState => "/v1/steady-state",
        }
    }
}

/// A well-formed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub op: Op,
    pub id: String,
    pub group: String,
}

/// The error kinds this server answers with (the protocol's `kind`): a bounded set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Not HTTP/1.x, a head or body past the bounds, no `Content-Length`, too slow.
    BadRequest,
    /// Not `POST`.
    Method,
    /// Neither endpoint.
    Endpoint,
    /// The `fleet-lock-protocol: true` header is missing or says something else.
    ProtocolHeader,
    /// The body is not the protocol's JSON (or a field is empty, or the group malformed).
    Body,
    /// No Node pool carries the group.
    UnknownGroup,
    /// No Node's machine-id gives this id.
    UnknownId,
    /// The id's Node is in another pool, or in none.
    GroupMismatch,
    /// No Update selects the Node: there is no budget to take a slot from.
    NoRollout,
    /// No slot now (the planner's reason in the value): `maxUnavailable`, a closed window,
    /// control plane first, paused, halted.
    SemaphoreFull,
    /// The lock is held and the Node is being drained: ask again.
    Draining,
    /// The drain ended without leave to reboot (pods that need consent, `onTimeout: abort`).
    DrainFailed,
    /// `steady-state` before the Node is Ready again: ask again.
    NotReady,
    /// This coordinator does not lead now, or has not claimed the Update yet: ask again.
    NotLeader,
    /// The API server did not answer, or the writes kept conflicting: ask again.
    Unavailable,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::BadRequest => "failed_bad_request",
            Kind::Method => "failed_method",
            Kind::Endpoint => "failed_endpoint",
            Kind::ProtocolHeader => "failed_protocol_header",
            Kind::Body => "failed_body",
            Kind::UnknownGroup => "failed_unknown_group",
            Kind::UnknownId => "failed_unknown_id",
            Kind::GroupMismatch => "failed_group_mismatch",
            Kind::NoRollout => "failed_no_rollout",
            Kind::SemaphoreFull => "failed_lock_semaphore_full",
            Kind::Draining => "failed_lock_draining",
            Kind::DrainFailed => "failed_lock_drain",
            Kind::NotReady => "failed_unlock_not_ready",
            Kind::NotLeader => "failed_not_leader",
            Kind::Unavailable => "failed_unavailable",
        }
    }

    /// The HTTP status: the client's fault 4xx, "ask again later" 409/503.
    pub fn status(self) -> u16 {
        match self {
            Kind::BadRequest | Kind::ProtocolHeader | Kind::Body => 400,
            Kind::Method => 405,
            Kind::Endpoint | Kind::UnknownGroup | Kind::UnknownId => 404,
            Kind::GroupMismatch | Kind::NoRollout | Kind::SemaphoreFull | Kind::DrainFailed => 409,
            Kind::Draining | Kind::NotReady | Kind::NotLeader | Kind::Unavailable => 503,
        }
    }
}

/// A failed operation: its kind and one line for the admin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub kind: Kind,
    pub value: String,
}

impl Rejection {
    pub fn new(kind: Kind, value: impl Into<String>) -> Rejection {
        Rejection {
            kind,
            value: value.into(),
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.value)
    }
}

impl std::error::Error for Rejection {}

/// What the head says, once it is whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub op: Op,
    pub content_length: usize,
    /// Everything after the head's blank line that came with it (the body's first bytes).
    pub body_start: usize,
}

/// The end of the head in `buf` (the index after its blank line), if it is all there.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Parse a whole head (`buf[..end]`, `end` from [`head_end`]).
pub fn parse_head(buf: &[u8], end: usize) -> Result<Head, Rejection> {
    let text = std::str::from_utf8(&buf[..end])
        .map_err(|_| Rejection::new(Kind::BadRequest, "the request head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    let (Some(method), Some(target), Some(version), None) = (method, target, version, parts.next())
    else {
        return Err(Rejection::new(
            Kind::BadRequest,
            "the request line is not `METHOD PATH HTTP/1.x`",
        ));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(Rejection::new(
            Kind::BadRequest,
            format!("{version}: only HTTP/1.x is served"),
        ));
    }
    let path = target.split('?').next().unwrap_or_default();
    let op = if path == Op::PreReboot.path() {
        Op::PreReboot
    } else if path == Op::SteadyState.path() {
        Op::SteadyState
    } else {
        return Err(Rejection::new(
            Kind::Endpoint,
            format!(
                "{path}: the FleetLock endpoints are /v1/pre-reboot and /v1/steady-state \
                 (configure the server's base URL without a path)"
            ),
        ));
    };
    if method != "POST" {
        return Err(Rejection::new(
            Kind::Method,
            format!("{method} {path}: FleetLock operations are POST"),
        ));
    }
    let mut content_length = None;
    let mut protocol = None;
    let mut chunked = false;
    for h in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = h.split_once(':') else {
            return Err(Rejection::new(Kind::BadRequest, "a header line has no `:`"));
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                content_length = Some(value.parse::<usize>().map_err(|_| {
                    Rejection::new(Kind::BadRequest, format!("Content-Length {value:?}"))
                })?)
            }
            "transfer-encoding" => chunked = true,
            "fleet-lock-protocol" => protocol = Some(value.to_owned()),
            _ => {}
        }
    }
    if protocol.as_deref() != Some("true") {
        return Err(Rejection::new(
            Kind::ProtocolHeader,
            match protocol {
                None => "the header `fleet-lock-protocol: true` is missing".to_owned(),
                Some(v) => format!("the header fleet-lock-protocol is {v:?}, not \"true\""),
            },
        ));
    }
    if chunked {
        return Err(Rejection::new(
            Kind::BadRequest,
            "a chunked body is not served: send it with Content-Length",
        ));
    }
    let Some(content_length) = content_length else {
        return Err(Rejection::new(
            Kind::BadRequest,
            "the body has no Content-Length",
        ));
    };
    if content_length > MAX_BODY {
        return Err(Rejection::new(
            Kind::BadRequest,
            format!("a body of {content_length} bytes: at most {MAX_BODY} are read"),
        ));
    }
    Ok(Head {
        op,
        content_length,
        body_start: end,
    })
}

#[derive(Deserialize)]
struct Body {
    client_params: ClientParams,
}

#[derive(Deserialize)]
struct ClientParams {
    id: String,
    group: String,
}

/// The body's client parameters, checked as the protocol says.
pub fn parse_body(op: Op, body: &[u8]) -> Result<Request, Rejection> {
    let b: Body = serde_json::from_slice(body).map_err(|e| {
        Rejection::new(
            Kind::Body,
            format!("the body is not {{\"client_params\":{{\"id\":…,\"group\":…}}}}: {e}"),
        )
    })?;
    let ClientParams { id, group } = b.client_params;
    if id.is_empty() {
        return Err(Rejection::new(Kind::Body, "client_params.id is empty"));
    }
    if group.is_empty()
        || !group
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    {
        return Err(Rejection::new(
            Kind::Body,
            format!("client_params.group {group:?} does not match ^[a-zA-Z0-9.-]+$"),
        ));
    }
    Ok(Request { op, id, group })
}

/// The whole answer: 200 with an empty JSON object, or the rejection's status and body.
pub fn answer(result: &Result<(), Rejection>) -> Vec<u8> {
    let (status, body) = match result {
        Ok(()) => (200, "{}".to_owned()),
        Err(r) => (
            r.kind.status(),
            json!({"kind": r.kind.as_str(), "value": r.value}).to_string(),
        ),
    };
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        _ => "Service Unavailable",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(head: &str, body: &str) -> Result<Request, Rejection> {
        let raw = format!("{head}\r\n\r\n{body}");
        let buf = raw.as_bytes();
        let end = head_end(buf).unwrap();
        let h = parse_head(buf, end)?;
        assert_eq!(
            h.content_length,
            buf.len() - end,
            "test request's Content-Length"
        );
        parse_body(h.op, &buf[h.body_start..])
    }

    const BODY: &str =
        r#"{"client_params":{"group":"workers","id":"975228d46dc94622b9bbe16671e2b58d"}}"#;

    /// What Zincati's client sends (reqwest: the pretty-printed body, its Content-Length, the
    /// protocol header), written from the protocol document and Zincati's `fleet_lock` module.
    #[test]
    fn zincatis_request_parses() {
        let body = "{\n  \"client_params\": {\n    \"id\": \"975228d46dc94622b9bbe16671e2b58d\",\n    \"group\": \"workers\"\n  }\n}";
        let head = format!(
            "POST /v1/pre-reboot HTTP/1.1\r\nfleet-lock-protocol: true\r\naccept: */*\r\n\
             host: 10.0.0.1:9800\r\ncontent-length: {}",
            body.len()
        );
        assert_eq!(
            request(&head, body).unwrap(),
            Request {
                op: Op::PreReboot,
                id: "975228d46dc94622b9bbe16671e2b58d".into(),
                group: "workers".into()
            }
        );
        let head = format!(
            "POST /v1/steady-state HTTP/1.1\r\nFleet-Lock-Protocol: true\r\nContent-Length: {}",
            BODY.len()
        );
        assert_eq!(request(&head, BODY).unwrap().op, Op::SteadyState);
    }

    #[test]
    fn each_bad_request_has_its_kind() {
        let len = BODY.len();
        let kind = |head: &str, body: &str| request(head, body).unwrap_err().kind;
        assert_eq!(
            kind(
                &format!("POST /v1/pre-reboot HTTP/1.1\r\nContent-Length: {len}"),
                BODY
            ),
            Kind::ProtocolHeader
        );
        assert_eq!(
            kind(
                &format!("POST /v1/pre-reboot HTTP/1.1\r\nfleet-lock-protocol: yes\r\nContent-Length: {len}"),
                BODY
            ),
            Kind::ProtocolHeader
        );
        assert_eq!(
            kind(
                "GET /v1/pre-reboot HTTP/1.1\r\nfleet-lock-protocol: true\r\nContent-Length: 0",
                ""
            ),
            Kind::Method
        );
        assert_eq!(
            kind(
                "POST /v2/lock HTTP/1.1\r\nfleet-lock-protocol: true\r\nContent-Length: 0",
                ""
            ),
            Kind::Endpoint
        );
        assert_eq!(
            kind(
                "POST /v1/pre-reboot HTTP/1.1\r\nfleet-lock-protocol: true\r\nContent-Length: 5",
                "{nope"
            ),
            Kind::Body
        );
        let empty_id = r#"{"client_params":{"group":"default","id":""}}"#;
        let bad_group = r#"{"client_params":{"group":"a/b","id":"x"}}"#;
        for body in [empty_id, bad_group, r#"{"client_params":{"id":"x"}}"#] {
            assert_eq!(
                kind(
                    &format!("POST /v1/pre-reboot HTTP/1.1\r\nfleet-lock-protocol: true\r\nContent-Length: {}", body.len()),
                    body
                ),
                Kind::Body,
                "{body}"
            );
        }
    }

    #[test]
    fn bodies_past_the_bound_chunked_or_without_length_are_refused_before_reading() {
        let head = |extra: &str| {
            let raw = format!(
                "POST /v1/pre-reboot HTTP/1.1\r\nfleet-lock-protocol: true\r\n{extra}\r\n\r\n"
            );
            let end = head_end(raw.as_bytes()).unwrap();
            parse_head(raw.as_bytes(), end).map(|_| ()).unwrap_err()
        };
        assert!(head(&format!("Content-Length: {}", MAX_BODY + 1))
            .value
            .contains("at most"));
        assert!(head("Transfer-Encoding: chunked").value.contains("chunked"));
        assert!(head("X: y").value.contains("Content-Length"));
        assert_eq!(head("Content-Length: -1").kind, Kind::BadRequest);
    }

    #[test]
    fn answers_are_the_protocols_json() {
        let ok = String::from_utf8(answer(&Ok(()))).unwrap();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"));
        let r = Rejection::new(Kind::SemaphoreFull, "no slot (maxUnavailable 1)");
        let text = String::from_utf8(answer(&Err(r))).unwrap();
        assert!(text.starts_with("HTTP/1.1 409 Conflict\r\n"), "{text}");
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["kind"], "failed_lock_semaphore_full");
        assert_eq!(v["value"], "no slot (maxUnavailable 1)");
    }
}
