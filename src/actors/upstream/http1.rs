//! The HTTP/1.1 connection for lone counter calls: one kept-alive TLS
//! connection per worker, carrying one request at a time.
//!
//! It speaks only what a counter call needs. The request is a fixed head
//! without a body, written in one TLS record. The reply must give its
//! length in `Content-Length`, as every reply of k_server does. A reply
//! framed any other way is rejected with an error that names its framing. The
//! connection and its buffers are kept between calls, so a call allocates
//! only the reply body. awc, a general client, builds a new codec for
//! every call, and with it a task, a timer and a wake-up of the worker's
//! event loop. With awc the proxy used 63.7 µs of CPU per lone call, with
//! this module 48.7 µs (bench/run.sh at one connection, BENCHMARKS.md).
//!
//! A connection idle for [`IDLE_LIMIT`], or one that k_server has closed
//! (seen as end of stream before the request is written), is replaced by
//! a new one. A request is never sent twice: once it is written, any
//! failure is reported, because k_server may have counted it.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::web::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::{Failure, Target, MAX_HEADER_BYTES, MAX_RESPONSE_BYTES};

/// A kept connection idle for longer than this is closed instead of
/// reused. It is well below k_server's default keep-alive of 30 s, so that
/// k_server rarely closes a connection at the moment a request goes out.
const IDLE_LIMIT: Duration = Duration::from_secs(4);

/// Maximum number of header lines in a reply. k_server sends about five.
const MAX_HEADERS: usize = 32;

/// Bytes read from the socket at a time. A counter reply fits in one read.
const READ_CHUNK: usize = 4 * 1024;

/// The ALPN protocol id of HTTP/1.1.
pub(super) const ALPN_HTTP_1_1: &[u8] = b"http/1.1";

/// The worker's HTTP/1.1 connection, while no call uses it.
#[derive(Default)]
pub(super) struct Http1Link {
    idle: RefCell<Option<Idle>>,
}

struct Idle {
    /// Boxed: a TLS stream is over a kilobyte, and a call moves its
    /// connection out of the link and back.
    connection: Box<Connection>,
    since: Instant,
}

struct Connection {
    tls: TlsStream<TcpStream>,
    /// The request being written, kept to reuse its allocation.
    request: String,
    /// Reply bytes read so far, kept to reuse its allocation.
    reply: BytesMut,
}

/// The fields of a reply head that the proxy uses.
#[derive(Debug, PartialEq, Eq)]
struct ReplyHead {
    status: StatusCode,
    /// Bytes of the head, blank line included.
    head_len: usize,
    body_len: usize,
    /// Whether k_server keeps the connection open after this reply.
    keep_alive: bool,
}

impl Http1Link {
    /// Sends `POST {path}` without a body and returns the reply's status and
    /// body. `request_id` is sent in `x-request-id` when it is a valid
    /// header value. The caller bounds the whole call in time.
    pub(super) async fn post(
        &self,
        target: &Target,
        path: &str,
        request_id: &str,
    ) -> Result<(StatusCode, Bytes), Failure> {
        let url = target.base_url.as_str();
        let mut connection = match self.take_reusable() {
            Some(connection) => connection,
            None => open(target).await?,
        };

        connection.request.clear();
        // `fmt::Write` for String never returns an error.
        let _ = write!(
            connection.request,
            "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-length: 0\r\n",
            target.authority
        );
        if is_header_value(request_id) {
            let _ = write!(connection.request, "x-request-id: {request_id}\r\n");
        }
        connection.request.push_str("\r\n");
        let sent = async {
            connection
                .tls
                .write_all(connection.request.as_bytes())
                .await?;
            connection.tls.flush().await
        };
        sent.await
            .map_err(|e| Failure::Failed(format!("sending a request to {url} failed: {e}")))?;

        connection.reply.clear();
        let head = loop {
            if let Some(head) = parse_head(&connection.reply, url)? {
                break head;
            }
            if connection.reply.len() > MAX_HEADER_BYTES as usize {
                return Err(Failure::Failed(format!(
                    "{url} sent a reply head longer than {MAX_HEADER_BYTES} bytes"
                )));
            }
            read_more(&mut connection, url).await?;
        };
        let end = head.head_len + head.body_len;
        while connection.reply.len() < end {
            read_more(&mut connection, url).await?;
        }
        if connection.reply.len() > end {
            return Err(Failure::Failed(format!(
                "{url} sent {} bytes after its reply; k_server sends nothing unasked",
                connection.reply.len() - end
            )));
        }
        let body = Bytes::copy_from_slice(&connection.reply[head.head_len..end]);

        if head.keep_alive {
            *self.idle.borrow_mut() = Some(Idle {
                connection,
                since: Instant::now(),
            });
        }
        Ok((head.status, body))
    }

    /// Takes the kept connection if it is recent and k_server has not
    /// closed it.
    fn take_reusable(&self) -> Option<Box<Connection>> {
        let Idle {
            mut connection,
            since,
        } = self.idle.borrow_mut().take()?;
        if since.elapsed() > IDLE_LIMIT {
            return None;
        }
        // An idle connection has nothing to read. Ready means end of stream
        // (k_server closed it) or stray bytes, and neither is reused.
        let mut scratch = [0u8; 1];
        let mut buf = ReadBuf::new(&mut scratch);
        let mut cx = Context::from_waker(Waker::noop());
        match Pin::new(&mut connection.tls).poll_read(&mut cx, &mut buf) {
            Poll::Pending => Some(connection),
            Poll::Ready(_) => None,
        }
    }
}

/// Opens a connection: TCP, then TLS with HTTP/1.1 agreed by ALPN, within
/// the connect timeout.
async fn open(target: &Target) -> Result<Box<Connection>, Failure> {
    let url = target.base_url.as_str();
    let connect = async {
        let tls = target.connect_tls(&target.tls_http1).await?;
        match tls.get_ref().1.alpn_protocol() {
            None | Some(ALPN_HTTP_1_1) => Ok(tls),
            Some(other) => Err(Failure::Failed(format!(
                "{url} chose ALPN protocol {:?} when offered only HTTP/1.1",
                String::from_utf8_lossy(other)
            ))),
        }
    };
    let tls = tokio::time::timeout(target.connect_timeout, connect)
        .await
        .map_err(|_| target.connect_timed_out())??;
    tracing::debug!(url, "connected to k_server over HTTP/1.1");
    Ok(Box::new(Connection {
        tls,
        request: String::with_capacity(256),
        reply: BytesMut::with_capacity(READ_CHUNK),
    }))
}

/// Reads more of the reply. End of stream before the reply is complete is
/// a failure.
async fn read_more(connection: &mut Connection, url: &str) -> Result<(), Failure> {
    connection.reply.reserve(READ_CHUNK);
    let read = connection
        .tls
        .read_buf(&mut connection.reply)
        .await
        .map_err(|e| Failure::Failed(format!("reading the reply of {url} failed: {e}")))?;
    if read == 0 {
        return Err(Failure::Failed(format!(
            "{url} closed the connection after {} bytes of its reply; \
             check k_server's log for the request id",
            connection.reply.len()
        )));
    }
    Ok(())
}

/// Returns whether `value` can be sent as a header value unchanged. Only
/// visible ASCII is, so nothing in it can end the header line early.
fn is_header_value(value: &str) -> bool {
    !value.is_empty() && value.bytes().all(|byte| byte.is_ascii_graphic())
}

/// Parses the reply head in `bytes`, or returns `None` while it is not
/// complete.
fn parse_head(bytes: &[u8], url: &str) -> Result<Option<ReplyHead>, Failure> {
    let invalid = |what: String| Failure::Failed(format!("{url} sent an invalid reply: {what}"));
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut reply = httparse::Response::new(&mut headers);
    let head_len = match reply.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(invalid(format!("{e} in its head"))),
    };
    let code = reply.code.unwrap_or_default();
    let status = StatusCode::from_u16(code)
        .map_err(|_| invalid(format!("status code {code} is out of range")))?;
    if status.is_informational() {
        return Err(invalid(format!(
            "interim status {code} to a request that asked for none"
        )));
    }

    // HTTP/1.1 keeps the connection by default, HTTP/1.0 closes it.
    let mut keep_alive = reply.version == Some(1);
    let mut body_len = None;
    for header in reply.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            let len = std::str::from_utf8(header.value)
                .ok()
                .and_then(|text| text.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    invalid(format!(
                        "Content-Length {:?} is not a number",
                        String::from_utf8_lossy(header.value)
                    ))
                })?;
            if body_len.is_some_and(|earlier| earlier != len) {
                return Err(invalid("two different Content-Length headers".into()));
            }
            body_len = Some(len);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(invalid(format!(
                "Transfer-Encoding {:?}; the proxy reads only replies with a Content-Length, \
                 as k_server sends them",
                String::from_utf8_lossy(header.value)
            )));
        } else if header.name.eq_ignore_ascii_case("connection") {
            let tokens = header.value.split(|&byte| byte == b',');
            for token in tokens.map(|token| token.trim_ascii()) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }

    let body_len = match body_len {
        Some(len) => len,
        None if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED => 0,
        None => return Err(invalid(format!("status {code} without Content-Length"))),
    };
    if body_len > MAX_RESPONSE_BYTES {
        return Err(Failure::Failed(format!(
            "{url} sent a reply larger than {MAX_RESPONSE_BYTES} bytes"
        )));
    }
    Ok(Some(ReplyHead {
        status,
        head_len,
        body_len,
        keep_alive,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "https://k-server.test";

    fn parse(bytes: &str) -> Result<Option<ReplyHead>, String> {
        parse_head(bytes.as_bytes(), URL).map_err(|failure| match failure {
            Failure::Failed(text) | Failure::Timeout(text) => text,
        })
    }

    #[test]
    fn head_of_a_counter_reply() {
        let head =
            "HTTP/1.1 200 OK\r\ncontent-length: 24\r\ncontent-type: application/json\r\n\r\n";
        assert_eq!(
            parse(head),
            Ok(Some(ReplyHead {
                status: StatusCode::OK,
                head_len: head.len(),
                body_len: 24,
                keep_alive: true,
            }))
        );
    }

    #[test]
    fn head_not_complete_yet() {
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("HTTP/1.1 200 OK\r\ncontent-len"), Ok(None));
    }

    #[test]
    fn connection_close_ends_keep_alive() {
        let closing = parse("HTTP/1.1 503 Busy\r\nConnection: close\r\nContent-Length: 2\r\n\r\n");
        assert_eq!(
            closing.map(|head| head.map(|h| h.keep_alive)),
            Ok(Some(false))
        );
        let old = parse("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n");
        assert_eq!(old.map(|head| head.map(|h| h.keep_alive)), Ok(Some(false)));
        let kept = parse("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\n");
        assert_eq!(kept.map(|head| head.map(|h| h.keep_alive)), Ok(Some(true)));
    }

    #[test]
    fn unusable_reply_lengths_are_rejected() {
        let cases = [
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                "Transfer-Encoding \"chunked\"",
            ),
            (
                "HTTP/1.1 200 OK\r\n\r\n",
                "status 200 without Content-Length",
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n",
                "Content-Length \"ten\" is not a number",
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                "two different Content-Length headers",
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 65537\r\n\r\n",
                "larger than 65536 bytes",
            ),
            ("HTTP/1.1 100 Continue\r\n\r\n", "interim status 100"),
            (
                "HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
                "invalid header name in its head",
            ),
        ];
        for (head, expected) in cases {
            let text = parse(head).expect_err(head);
            assert!(text.contains(expected), "{head:?}: {text}");
            assert!(text.contains(URL), "{text}");
        }
    }

    #[test]
    fn bodiless_statuses_need_no_length() {
        let head = parse("HTTP/1.1 204 No Content\r\n\r\n")
            .expect("parse")
            .expect("complete");
        assert_eq!(head.body_len, 0);
    }

    #[test]
    fn unsafe_request_ids_are_left_out() {
        assert!(is_header_value("0123456789abcdef"));
        for value in ["", "a b", "a\r\nx-evil: 1", "é"] {
            assert!(!is_header_value(value), "{value:?}");
        }
    }
}
