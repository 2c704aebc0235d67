//! A blocking HTTP/1.1 POST over a plain TCP connection, bounded in time and
//! in what it reads: the one request a webhook attempt makes.
//!
//! One connection per request (`Connection: close`): no pool to go stale,
//! and the answer ends where the receiver closes. Every wait (connect,
//! write, each read) is given what is left of the request's deadline. Of
//! the answer only the head is parsed (at most [`MAX_HEAD_BYTES`]); of its
//! body only what arrived with the head is kept, cut to
//! [`MAX_BODY_EXCERPT_BYTES`], for the failure message. Name resolution is
//! the system's (`getaddrinfo`), which this deadline does not bound.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::config::SinkUrl;

use super::WebhookError;

/// Largest response head (status line and headers) read.
pub(crate) const MAX_HEAD_BYTES: usize = 16 << 10;
/// Largest piece of a response body kept for a failure message.
pub(crate) const MAX_BODY_EXCERPT_BYTES: usize = 256;
/// Longest `Retry-After` honoured; a longer one is cut to this.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// What came back.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    /// `Retry-After`, as a wait from now, capped at [`MAX_RETRY_AFTER`].
    pub(crate) retry_after: Option<Duration>,
    /// The start of the body, at most [`MAX_BODY_EXCERPT_BYTES`].
    pub(crate) excerpt: Vec<u8>,
}

/// POST `body` to `url` with `headers`, all of it within `timeout`.
pub(crate) fn post(
    url: &SinkUrl,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<Response, WebhookError> {
    let deadline = Instant::now() + timeout;
    let left = || deadline.saturating_duration_since(Instant::now());
    let timed_out = || WebhookError::Timeout { url: url.text.clone(), timeout };
    let io = |e: std::io::Error| {
        if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) {
            timed_out()
        } else {
            WebhookError::Io { url: url.text.clone(), reason: e.to_string() }
        }
    };
    let addrs: Vec<SocketAddr> = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| WebhookError::Connect { url: url.text.clone(), reason: e.to_string() })?
        .collect();
    let mut stream = None;
    let mut last = String::from("the host name resolves to no address");
    for addr in addrs {
        if left().is_zero() {
            return Err(timed_out());
        }
        match TcpStream::connect_timeout(&addr, left()) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) if e.kind() == ErrorKind::TimedOut => return Err(timed_out()),
            Err(e) => last = e.to_string(),
        }
    }
    let mut stream = stream.ok_or_else(|| WebhookError::Connect { url: url.text.clone(), reason: last })?;
    let _ = stream.set_nodelay(true);

    let host = if url.host.contains(':') { format!("[{}]", url.host) } else { url.host.clone() };
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {host}:{}\r\nUser-Agent: weir/{}\r\nContent-Length: {}\r\nConnection: close\r\n",
        url.path,
        url.port,
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    for (name, value) in headers {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    // Written piece by piece, each wait given what is left: `write_all`
    // under one write timeout would let a receiver that reads a byte now
    // and then stretch the request far past its deadline.
    for data in [head.as_bytes(), body] {
        let mut written = 0;
        while written < data.len() {
            let wait = left();
            if wait.is_zero() {
                return Err(timed_out());
            }
            stream.set_write_timeout(Some(wait)).map_err(io)?;
            match stream.write(&data[written..]) {
                Ok(0) => return Err(io(ErrorKind::WriteZero.into())),
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(io(e)),
            }
        }
    }

    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = find_head_end(&buf) {
            break i;
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(WebhookError::BadResponse {
                url: url.text.clone(),
                reason: format!("response head over {MAX_HEAD_BYTES} bytes"),
            });
        }
        let wait = left();
        if wait.is_zero() {
            return Err(timed_out());
        }
        stream.set_read_timeout(Some(wait)).map_err(io)?;
        match stream.read(&mut chunk) {
            Ok(0) => {
                return Err(WebhookError::BadResponse {
                    url: url.text.clone(),
                    reason: "the connection closed before a complete response head".to_owned(),
                });
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(io(e)),
        }
    };
    let mut response =
        parse_head(&buf[..end]).map_err(|reason| WebhookError::BadResponse { url: url.text.clone(), reason })?;
    let rest = &buf[end..];
    response.excerpt = rest[..rest.len().min(MAX_BODY_EXCERPT_BYTES)].to_vec();
    Ok(response)
}

/// Where the head ends (after its blank line), if it has.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// The status and `Retry-After` of a response head.
fn parse_head(head: &[u8]) -> Result<Response, String> {
    let text = std::str::from_utf8(head).map_err(|_| "the response head is not UTF-8".to_owned())?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1 status line: {:?}", crate::engine::bounded_text(status_line, 64)));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|s| (100..=599).contains(s))
        .ok_or_else(|| format!("bad status in {:?}", crate::engine::bounded_text(status_line, 64)))?;
    let retry_after = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("retry-after"))
        .and_then(|(_, value)| retry_after(value.trim()));
    Ok(Response { status, retry_after, excerpt: Vec::new() })
}

/// `Retry-After`: delay seconds or an HTTP date, as a wait from now, capped
/// at [`MAX_RETRY_AFTER`]. Anything else is ignored (the policy's backoff
/// applies).
pub(crate) fn retry_after(value: &str) -> Option<Duration> {
    let wait = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc2822).ok()?;
        let secs = (at - time::OffsetDateTime::now_utc()).whole_seconds();
        Duration::from_secs(u64::try_from(secs).unwrap_or(0))
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_gives_its_status_and_retry_after() {
        let head = b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\nretry-after: 3\r\n\r\n";
        let r = parse_head(head).unwrap();
        assert_eq!((r.status, r.retry_after), (429, Some(Duration::from_secs(3))));
        assert!(parse_head(b"SSH-2.0 hello\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 999 x\r\n\r\n").is_err());
        assert_eq!(find_head_end(b"HTTP/1.1 200 OK\r\n\r\nbody"), Some(19));
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date_and_is_capped() {
        assert_eq!(retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(retry_after("99999999"), Some(MAX_RETRY_AFTER));
        assert_eq!(retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO), "a past date: at once");
        assert_eq!(retry_after("soon"), None);
    }
}
