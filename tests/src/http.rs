//! The one HTTP client of the tests: a plain `GET` for the services'
//! `/metrics`, `/livez` and `/readyz` and for Prometheus's API, and a wait
//! on its answer. One request per connection (`Connection: close`); a
//! chunked body is put back together.

use crate::poll;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `GET path` on `addr` over HTTP/1.1: the status code and the body.
pub async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let (head, body) = match raw.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => (&raw[..end], &raw[end + 4..]),
        None => (&raw[..], &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {head:?}")))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The data of a chunked body (what precedes a malformed chunk).
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = body.windows(2).position(|w| w == b"\r\n") {
        let line = String::from_utf8_lossy(&body[..eol]);
        let size = line.split(';').next().unwrap_or_default().trim();
        let Ok(size) = usize::from_str_radix(size, 16) else {
            break;
        };
        let rest = &body[eol + 2..];
        if size == 0 || rest.len() < size {
            break;
        }
        out.extend_from_slice(&rest[..size]);
        body = rest[size..].strip_prefix(b"\r\n").unwrap_or(&rest[size..]);
    }
    out
}

/// Polls `GET path` on `addr` every `every` until `done(status, body)`
/// holds (a connection error is "not yet"): how long that took, and the
/// body. After `within`, an error naming the last answer.
pub async fn wait_for(
    addr: SocketAddr,
    path: &str,
    within: Duration,
    every: Duration,
    done: impl Fn(u16, &str) -> bool,
) -> Result<(Duration, String), String> {
    let started = Instant::now();
    let last = Mutex::new(String::from("no answer yet"));
    let (last, done) = (&last, &done);
    let what = format!("GET {path} on {addr}");
    poll(&what, within, every, || async move {
        let got = get(addr, path).await;
        let body = match &got {
            Ok((status, body)) if done(*status, body) => Some(body.clone()),
            _ => None,
        };
        if let Ok(mut l) = last.lock() {
            *l = format!("{got:?}");
        }
        Ok(body)
    })
    .await
    .map(|body| (started.elapsed(), body))
    .map_err(|e| {
        let l = last.lock().map(|l| l.clone()).unwrap_or_default();
        format!("{e}; last answer: {l}")
    })
}

/// Waits until `GET path` answers `want` (within [`crate::DEADLINE`],
/// polling every 20 ms); fails the test otherwise.
pub async fn wait_status(addr: SocketAddr, path: &str, want: u16) {
    if let Err(e) = wait_for(
        addr,
        path,
        crate::DEADLINE,
        Duration::from_millis(20),
        |status, _| status == want,
    )
    .await
    {
        panic!("{path} did not answer {want}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::dechunk;

    #[test]
    fn chunked_bodies_are_put_back_together() {
        assert_eq!(
            dechunk(b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n"),
            b"hello world"
        );
        assert_eq!(dechunk(b"5\r\nhel"), b"");
        assert_eq!(dechunk(b"zz\r\n"), b"");
    }
}
