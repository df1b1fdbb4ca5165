//! HTTP/1.1 requests and responses on one API connection, with every size and time
//! bounded: the head (request line and headers) is parsed by `httparse` out of at most
//! [`MAX_HEAD`] bytes, a body may be at most [`MAX_BODY`], a connection may wait at most
//! [`IDLE_LIMIT`] for its next request and a request must arrive whole within
//! [`REQUEST_LIMIT`] of its first byte, however slowly it trickles. Nothing a client sends
//! can make the VMM buffer more or hold the API longer; a stopping server cuts it short.
//!
//! Why not a server crate: Firecracker's `micro_http` is not published on crates.io (and
//! GitHub is not reachable from our machines), and `tiny_http` reads a header line without
//! a length limit and runs its own threads, which the per-thread seccomp filters of the
//! hardening issue would have to allow. `httparse` is the parser hyper uses.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// The most a request head may take.
pub const MAX_HEAD: usize = 16 * 1024;
/// The largest request body accepted (the API's JSON bodies are a few hundred bytes).
pub const MAX_BODY: usize = 64 * 1024;
/// Headers a request may have.
const MAX_HEADERS: usize = 32;
/// How long a read waits before the connection's limits are checked again.
const READ_SLICE: Duration = Duration::from_millis(200);
/// A connection with no request for this long is closed.
pub const IDLE_LIMIT: Duration = Duration::from_secs(5);
/// A request (head and body) must be complete this long after its first byte.
pub const REQUEST_LIMIT: Duration = Duration::from_secs(5);
/// How long a refused request's rest is read and dropped, at most.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// After refusing an oversized body, how much of it is read and dropped so the client sees
/// the answer rather than a reset connection.
const DISCARD_LIMIT: usize = 16 * 1024 * 1024;

#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path without a query string.
    pub path: String,
    pub body: Vec<u8>,
    /// The client wants the connection kept open after the answer.
    pub keep_alive: bool,
}

/// Why no request could be read; each but `Closed` and `Idle` is answered before closing.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// The client closed the connection between requests.
    Closed,
    /// No request came within [`IDLE_LIMIT`], or the server is stopping.
    Idle,
    /// The request did not arrive whole within [`REQUEST_LIMIT`].
    TooSlow,
    /// Not HTTP/1.x, or cut short.
    Malformed(String),
    HeadTooLarge,
    BodyTooLarge(u64),
    /// A body without Content-Length (chunked): not accepted.
    LengthRequired,
}

impl ReadError {
    /// The status and message an answer to this error carries, if it gets one.
    pub fn answer(&self) -> Option<(u16, String)> {
        match self {
            ReadError::Closed | ReadError::Idle => None,
            ReadError::TooSlow => Some((
                408,
                format!(
                    "the request did not arrive whole within {} s",
                    REQUEST_LIMIT.as_secs()
                ),
            )),
            ReadError::Malformed(why) => Some((400, format!("malformed HTTP request: {why}"))),
            ReadError::HeadTooLarge => Some((
                431,
                format!("request line and headers exceed {MAX_HEAD} bytes"),
            )),
            ReadError::BodyTooLarge(n) => Some((
                413,
                format!("request body of {n} bytes exceeds the limit of {MAX_BODY}"),
            )),
            ReadError::LengthRequired => Some((
                411,
                "a request body needs a Content-Length (chunked bodies are not accepted)".into(),
            )),
        }
    }
}

/// A request head, parsed.
struct Head {
    len: usize,
    method: String,
    path: String,
    body_len: u64,
    keep_alive: bool,
}

/// Parses a complete head out of `buf`: `Ok(None)` if more bytes are needed.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, ReadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(ReadError::Malformed(e.to_string())),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(ReadError::Malformed("incomplete request line".into()));
    };
    let mut body_len = 0u64;
    let mut keep_alive = version == 1;
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            body_len = value
                .parse()
                .map_err(|_| ReadError::Malformed(format!("Content-Length {value:?}")))?;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ReadError::LengthRequired);
        } else if h.name.eq_ignore_ascii_case("connection") {
            keep_alive = !value.eq_ignore_ascii_case("close");
        }
    }
    if body_len > MAX_BODY as u64 {
        return Err(ReadError::BodyTooLarge(body_len));
    }
    let path = target.split('?').next().unwrap_or("").to_string();
    Ok(Some(Head {
        len,
        method: method.to_string(),
        path,
        body_len,
        keep_alive,
    }))
}

/// One client connection.
pub struct Connection {
    stream: UnixStream,
    /// Bytes read but not yet used (the start of the next request, with keep-alive).
    buf: Vec<u8>,
}

impl Connection {
    pub fn new(stream: UnixStream) -> io::Result<Connection> {
        stream.set_read_timeout(Some(READ_SLICE))?;
        stream.set_write_timeout(Some(IDLE_LIMIT))?;
        Ok(Connection {
            stream,
            buf: Vec::new(),
        })
    }

    /// Reads more bytes into `buf` (at most `room`): Ok(0) at end of stream. Gives up at
    /// `deadline` (`expired` says how) or as soon as `stopping` says so.
    fn fill(
        &mut self,
        room: usize,
        (deadline, expired): (Instant, fn() -> ReadError),
        stopping: &dyn Fn() -> bool,
    ) -> Result<usize, ReadError> {
        let mut chunk = [0u8; 4096];
        let want = room.min(chunk.len());
        loop {
            if stopping() {
                return Err(ReadError::Idle);
            }
            if Instant::now() >= deadline {
                return Err(expired());
            }
            match self.stream.read(&mut chunk[..want]) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(ReadError::Malformed(format!("read failed: {e}"))),
            }
        }
    }

    /// The next request on this connection.
    pub fn read_request(&mut self, stopping: &dyn Fn() -> bool) -> Result<Request, ReadError> {
        // Until its first byte the connection is idle; from then on the request has
        // REQUEST_LIMIT to arrive whole, however it trickles in.
        let mut deadline = (
            Instant::now() + IDLE_LIMIT,
            (|| ReadError::Idle) as fn() -> ReadError,
        );
        let request_deadline = |d: &mut (Instant, fn() -> ReadError), buf: &[u8]| {
            if !buf.is_empty() && d.1() == ReadError::Idle {
                *d = (Instant::now() + REQUEST_LIMIT, || ReadError::TooSlow);
            }
        };
        request_deadline(&mut deadline, &self.buf);
        let head = loop {
            if let Some(head) = parse_head(&self.buf)? {
                break head;
            }
            if self.buf.len() >= MAX_HEAD {
                return Err(ReadError::HeadTooLarge);
            }
            let room = MAX_HEAD - self.buf.len();
            if self.fill(room, deadline, stopping)? == 0 {
                return Err(if self.buf.is_empty() {
                    ReadError::Closed
                } else {
                    ReadError::Malformed("connection closed inside the request head".into())
                });
            }
            request_deadline(&mut deadline, &self.buf);
        };
        let end = head.len + head.body_len as usize; // at most MAX_HEAD + MAX_BODY
        while self.buf.len() < end {
            if self.fill(end - self.buf.len(), deadline, stopping)? == 0 {
                return Err(ReadError::Malformed(
                    "connection closed inside the body".into(),
                ));
            }
        }
        let body = self.buf[head.len..end].to_vec();
        self.buf.drain(..end);
        Ok(Request {
            method: head.method,
            path: head.path,
            body,
            keep_alive: head.keep_alive,
        })
    }

    /// Writes one response.
    pub fn respond(&mut self, response: &Response, keep_alive: bool) -> io::Result<()> {
        self.stream.write_all(&response.to_bytes(keep_alive))?;
        self.stream.flush()
    }

    /// Before closing after a refused request: reads and drops what the client is still
    /// sending (at most [`DISCARD_LIMIT`] bytes for [`DRAIN_LIMIT`], less if `stopping`),
    /// so it gets to read the answer instead of a reset.
    pub fn drain(&mut self, stopping: &dyn Fn() -> bool) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        let since = Instant::now();
        let mut dropped = 0usize;
        let mut chunk = [0u8; 16 * 1024];
        while dropped < DISCARD_LIMIT && since.elapsed() < DRAIN_LIMIT && !stopping() {
            match self.stream.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => dropped += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => return,
            }
        }
    }
}

/// An answer: a status, a JSON body (none for 204) and, for 405, the methods allowed.
#[derive(Debug, PartialEq)]
pub struct Response {
    pub status: u16,
    pub body: Option<serde_json::Value>,
    pub allow: Option<&'static str>,
}

impl Response {
    pub fn no_content() -> Response {
        Response {
            status: 204,
            body: None,
            allow: None,
        }
    }

    pub fn json(status: u16, body: serde_json::Value) -> Response {
        Response {
            status,
            body: Some(body),
            allow: None,
        }
    }

    /// An error in Firecracker's shape: `{"fault_message": ...}`.
    pub fn fault(status: u16, message: impl Into<String>) -> Response {
        Response::json(
            status,
            serde_json::json!({ "fault_message": message.into() }),
        )
    }

    pub fn to_bytes(&self, keep_alive: bool) -> Vec<u8> {
        let body = self
            .body
            .as_ref()
            .map(|b| b.to_string().into_bytes())
            .unwrap_or_default();
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nServer: fluke-vmm\r\nContent-Length: {}\r\n",
            self.status,
            reason(self.status),
            body.len()
        );
        if self.body.is_some() {
            head.push_str("Content-Type: application/json\r\n");
        }
        if let Some(allow) = self.allow {
            head.push_str(&format!("Allow: {allow}\r\n"));
        }
        if !keep_alive {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&body);
        bytes
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(bytes: &[u8]) -> Result<Option<Head>, ReadError> {
        parse_head(bytes)
    }

    #[test]
    fn a_request_head_is_parsed_with_its_body_length() {
        let h = head(b"PATCH /vm?x=1 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 20\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.method.as_str(), h.path.as_str(), h.body_len),
            ("PATCH", "/vm", 20)
        );
        assert!(h.keep_alive);
        let h = head(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive);
        let h = head(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        assert!(head(b"GET / HTTP/1.1\r\nHost: x").unwrap().is_none());
    }

    #[test]
    fn bad_heads_are_refused_with_the_right_answer() {
        let answer = |b: &[u8]| head(b).err().and_then(|e| e.answer()).map(|(s, _)| s);
        assert_eq!(answer(b"\x00\x01garbage\r\n\r\n"), Some(400));
        assert_eq!(
            answer(b"GET / HTTP/1.1\r\nContent-Length: lots\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            answer(b"PUT / HTTP/1.1\r\nContent-Length: 10485760\r\n\r\n"),
            Some(413)
        );
        assert_eq!(
            answer(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some(411)
        );
        let many: String = (0..40).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(
            answer(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()),
            Some(400)
        );
    }

    #[test]
    fn requests_are_read_in_turn_and_an_endless_head_is_cut_off() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut conn = Connection::new(a).unwrap();
        b.write_all(b"GET / HTTP/1.1\r\n\r\nPATCH /vm HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
            .unwrap();
        let never = || false;
        assert_eq!(conn.read_request(&never).unwrap().path, "/");
        let second = conn.read_request(&never).unwrap();
        assert_eq!(
            (second.method.as_str(), second.body.as_slice()),
            ("PATCH", &b"{}"[..])
        );
        let writer = std::thread::spawn(move || {
            let _ = b.write_all(b"GET / HTTP/1.1\r\nX: ");
            let _ = b.write_all(&vec![b'a'; MAX_HEAD * 4]);
        });
        assert_eq!(conn.read_request(&never), Err(ReadError::HeadTooLarge));
        conn.drain(&never);
        writer.join().unwrap();
    }

    #[test]
    fn a_trickling_request_is_cut_off_and_a_stopping_server_stops_reading() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut conn = Connection::new(a).unwrap();
        let trickle = std::thread::spawn(move || {
            // One byte every 100 ms: never silent for long, never done.
            for _ in 0..((REQUEST_LIMIT.as_millis() / 100) + 20) {
                if b.write_all(b"G").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let never = || false;
        assert_eq!(conn.read_request(&never), Err(ReadError::TooSlow));
        drop(conn);
        trickle.join().unwrap();
        let (a, _b) = UnixStream::pair().unwrap();
        let mut conn = Connection::new(a).unwrap();
        let always = || true;
        assert_eq!(conn.read_request(&always), Err(ReadError::Idle));
    }

    #[test]
    fn responses_carry_length_type_and_allow() {
        let r = Response::fault(405, "no").to_bytes(false);
        let text = String::from_utf8(r).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{text}"
        );
        assert!(text.contains("Content-Type: application/json\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("{\"fault_message\":\"no\"}"));
        let r = String::from_utf8(Response::no_content().to_bytes(true)).unwrap();
        assert!(r.contains("Content-Length: 0\r\n") && !r.contains("Content-Type"));
    }
}
