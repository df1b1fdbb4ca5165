//! `fluke-vmm ctl --api-sock PATH info|pause|resume`: the control API without typing JSON.
//! One request per call, `Connection: close`; a non-2xx answer is an error whose message is
//! the API's `fault_message`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::cli::{CtlAction, CtlArgs};
use crate::error::{Error, Result};
use crate::logger::to_stdout;

/// The most of an answer the client reads.
const MAX_ANSWER: u64 = 1 << 20;
/// How long the client waits for an answer (a pause answers within the API's own 5 s).
const ANSWER_WAIT: Duration = Duration::from_secs(15);

pub fn ctl(args: &CtlArgs) -> Result<u8> {
    let sock = &args.api_sock;
    match &args.action {
        CtlAction::Info => call(sock, "GET", "/", None),
        CtlAction::Pause => call(sock, "PATCH", "/vm", Some(PAUSE)),
        CtlAction::Resume => call(sock, "PATCH", "/vm", Some(RESUME)),
        CtlAction::Snapshot { dir } => snapshot(sock, dir),
    }
}

const PAUSE: &str = r#"{"state": "Paused"}"#;
const RESUME: &str = r#"{"state": "Resumed"}"#;

/// Pauses a running VM, writes the snapshot, and resumes it (a paused VM stays paused).
fn snapshot(sock: &Path, dir: &Path) -> Result<u8> {
    let (_, info) = request(sock, "GET", "/", None)?;
    let running =
        serde_json::from_str::<serde_json::Value>(&info).is_ok_and(|v| v["state"] == "Running");
    if running {
        call(sock, "PATCH", "/vm", Some(PAUSE))?;
    }
    // The VMM resolves the path in its own working directory: give it an absolute one.
    let dir = std::path::absolute(dir)
        .map_err(|e| Error::ApiAnswer(format!("{}: {e}", dir.display())))?;
    let body = serde_json::json!({ "snapshot_dir": dir }).to_string();
    let made = call(sock, "PUT", "/snapshot/create", Some(&body));
    if running {
        call(sock, "PATCH", "/vm", Some(RESUME))?;
    }
    made
}

/// One request; a non-2xx answer is an error with the API's message, a JSON answer is
/// printed.
fn call(sock: &Path, method: &str, path: &str, body: Option<&str>) -> Result<u8> {
    let (status, answer) = request(sock, method, path, body)?;
    if !(200..300).contains(&status) {
        let message = serde_json::from_str::<serde_json::Value>(&answer)
            .ok()
            .and_then(|v| v["fault_message"].as_str().map(str::to_string))
            .unwrap_or(answer);
        return Err(Error::ApiAnswer(format!("{status}: {message}")));
    }
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&answer) {
        to_stdout(&format!(
            "{}\n",
            serde_json::to_string_pretty(&v).unwrap_or(answer)
        ));
    }
    Ok(0)
}

/// Sends one request and returns the status and body of the answer.
pub fn request(sock: &Path, method: &str, path: &str, body: Option<&str>) -> Result<(u16, String)> {
    let connect_err = |source| Error::ApiConnect {
        path: sock.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(sock).map_err(connect_err)?;
    stream
        .set_read_timeout(Some(ANSWER_WAIT))
        .map_err(connect_err)?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).map_err(connect_err)?;
    let mut raw = Vec::new();
    stream.take(MAX_ANSWER).read_to_end(&mut raw).map_err(|e| {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            Error::ApiAnswer(format!("no answer within {} s", ANSWER_WAIT.as_secs()))
        } else {
            connect_err(e)
        }
    })?;
    parse_answer(&raw)
}

fn parse_answer(raw: &[u8]) -> Result<(u16, String)> {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(raw) {
        Ok(httparse::Status::Complete(len)) => {
            let status = resp.code.unwrap_or(0);
            Ok((status, String::from_utf8_lossy(&raw[len..]).into_owned()))
        }
        Ok(httparse::Status::Partial) => Err(Error::ApiAnswer("the answer was cut short".into())),
        Err(e) => Err(Error::ApiAnswer(format!("not an HTTP answer: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_split_into_status_and_body() {
        let (s, b) = parse_answer(b"HTTP/1.1 409 Conflict\r\nContent-Length: 2\r\n\r\n{}").unwrap();
        assert_eq!((s, b.as_str()), (409, "{}"));
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\nContent-Le").is_err());
        assert!(parse_answer(b"\x00garbage").is_err());
    }
}
