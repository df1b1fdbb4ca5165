//! The control API: HTTP/1.1 with JSON bodies on a Unix socket (`run --api-sock PATH`),
//! with Firecracker's paths and bodies where the concept is the same, so that
//! `curl --unix-socket PATH http://localhost/` works.
//!
//! | request | answer |
//! |---|---|
//! | `GET /` | 200 `{"id", "state", "vmm_version", "app_name", "platform", "vcpus", "memory_mib"}` |
//! | `PATCH /vm {"state": "Paused"}` / `{"state": "Resumed"}` | 204 once the vCPU has paused / runs again |
//! | `PUT /snapshot/create {"snapshot_dir"}` or `{"snapshot_path", "mem_file_path"}` | 204 once a paused VM's snapshot is written |
//! | anything else | 404 (unknown path) or 405 (known path, other method), `{"fault_message"}` |
//!
//! Errors are `{"fault_message": "..."}` with 400 (bad body), 404, 405, 408 (too slow),
//! 409 (the VM has ended), 411, 413, 431 or 500. One thread serves the socket, one connection at a time;
//! every read is bounded ([`http`]), so no request can disturb the vCPU.

pub mod http;

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Deserialize;

use crate::control::{ControlError, VmControl};
use crate::error::{Error, Result};
use crate::snapshot::file::Target;
use http::{Connection, Request, Response};

/// What `GET /` reports that does not change during the run.
#[derive(Clone, Debug)]
pub struct InstanceInfo {
    pub id: String,
    pub platform: &'static str,
    pub vcpus: u32,
    pub memory_mib: u64,
}

/// How often the accept loop, waiting for a client, looks at the stop flag.
const ACCEPT_SLICE: Duration = Duration::from_millis(100);

/// The API server thread; stopping (or dropping) it joins the thread and removes the socket.
pub struct ApiServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Binds `path` (which must not exist yet) and starts serving it.
    pub fn start(path: &Path, info: InstanceInfo, control: Arc<VmControl>) -> Result<ApiServer> {
        if path.symlink_metadata().is_ok() {
            return Err(Error::ApiSocketExists {
                path: path.to_path_buf(),
            });
        }
        let listener = crate::listen::bind_listening(path).map_err(|source| Error::ApiSocket {
            path: path.to_path_buf(),
            source,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| Error::ApiSocket {
                path: path.to_path_buf(),
                source,
            })?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("fluke-api".into())
            .spawn(move || serve(&listener, &info, &control, &thread_stop))
            .map_err(|source| Error::HostIo {
                what: "API thread",
                source,
            })?;
        Ok(ApiServer {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(listener: &UnixListener, info: &InstanceInfo, control: &VmControl, stop: &AtomicBool) {
    crate::seccomp::confine_or_exit(crate::seccomp::ThreadKind::Api);
    let stopping = || stop.load(Ordering::Acquire);
    while !stopping() {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                wait_readable(listener, ACCEPT_SLICE);
                continue;
            }
            Err(e) => {
                log::warn!("api: accept failed: {e}");
                std::thread::sleep(ACCEPT_SLICE);
                continue;
            }
        };
        // The listener is non-blocking; the connection is not (its reads time out).
        if let Err(e) = stream.set_nonblocking(false) {
            log::warn!("api: {e}");
            continue;
        }
        match Connection::new(stream) {
            Ok(mut conn) => serve_connection(&mut conn, info, control, &stopping),
            Err(e) => log::warn!("api: cannot set up a connection: {e}"),
        }
    }
}

/// Waits until a client connects or `limit` passes (so the stop flag is seen).
fn wait_readable(listener: &UnixListener, limit: Duration) {
    let mut fd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: polls one valid pollfd for at most `limit`; it changes only `revents`.
    unsafe { libc::poll(&mut fd, 1, limit.as_millis() as libc::c_int) };
}

fn serve_connection(
    conn: &mut Connection,
    info: &InstanceInfo,
    control: &VmControl,
    stopping: &dyn Fn() -> bool,
) {
    loop {
        if stopping() {
            return;
        }
        match conn.read_request(stopping) {
            Ok(request) => {
                let response = route(&request, info, control);
                log::debug!(
                    "api: {} {} -> {}",
                    request.method,
                    request.path,
                    response.status
                );
                // A stopping server answers, then closes (no more keep-alive).
                let keep = request.keep_alive && !stopping();
                if conn.respond(&response, keep).is_err() || !keep {
                    return;
                }
            }
            Err(e) => {
                if let Some((status, message)) = e.answer() {
                    log::debug!("api: refused a request: {status} {message}");
                    let _ = conn.respond(&Response::fault(status, message), false);
                    conn.drain(stopping);
                }
                return;
            }
        }
    }
}

/// `PATCH /vm`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VmStateBody {
    state: WantedState,
}

#[derive(Debug, Deserialize)]
enum WantedState {
    Paused,
    Resumed,
}

/// Answers one request.
pub fn route(request: &Request, info: &InstanceInfo, control: &VmControl) -> Response {
    let method = request.method.as_str();
    match request.path.as_str() {
        "/" => match method {
            "GET" => Response::json(200, instance_info(info, control)),
            _ => method_not_allowed("GET"),
        },
        "/vm" => match method {
            "PATCH" => patch_vm(&request.body, control),
            _ => method_not_allowed("PATCH"),
        },
        "/snapshot/create" => match method {
            "PUT" => create_snapshot(&request.body, control),
            _ => method_not_allowed("PUT"),
        },
        "/actions" => match method {
            "PUT" => action(&request.body),
            _ => method_not_allowed("PUT"),
        },
        other => Response::fault(404, format!("unknown path {other:?}")),
    }
}

fn method_not_allowed(allow: &'static str) -> Response {
    Response {
        allow: Some(allow),
        ..Response::fault(405, format!("method not allowed here (allowed: {allow})"))
    }
}

fn instance_info(info: &InstanceInfo, control: &VmControl) -> serde_json::Value {
    serde_json::json!({
        "id": info.id,
        "state": control.state().name(),
        "vmm_version": env!("CARGO_PKG_VERSION"),
        "app_name": "fluke-vmm",
        "platform": info.platform,
        "vcpus": info.vcpus,
        "memory_mib": info.memory_mib,
    })
}

/// `PUT /snapshot/create`'s body: a directory (fluke's form: both files replaced together)
/// or Firecracker's two paths.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotBody {
    snapshot_dir: Option<PathBuf>,
    snapshot_path: Option<PathBuf>,
    mem_file_path: Option<PathBuf>,
    /// Firecracker's; only "Full" exists here.
    snapshot_type: Option<String>,
}

fn create_snapshot(body: &[u8], control: &VmControl) -> Response {
    let body: SnapshotBody = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => return Response::fault(400, format!("bad body for PUT /snapshot/create: {e}")),
    };
    if body.snapshot_type.as_deref().is_some_and(|t| t != "Full") {
        return Response::fault(400, "only \"Full\" snapshots exist here");
    }
    let target = match (body.snapshot_dir, body.snapshot_path, body.mem_file_path) {
        (Some(dir), None, None) => Target::Dir(dir),
        (None, Some(vmstate), Some(memory)) => Target::Files { vmstate, memory },
        _ => {
            return Response::fault(
                400,
                "give either \"snapshot_dir\" or both \"snapshot_path\" and \"mem_file_path\"",
            )
        }
    };
    match control.snapshot(target) {
        Ok(()) => Response::no_content(),
        Err(ControlError::Ended) => Response::fault(409, "the VM has ended"),
        Err(e @ ControlError::NotPaused) => Response::fault(400, e.to_string()),
        Err(e @ ControlError::SnapshotBusy) => Response::fault(409, e.to_string()),
        Err(e @ ControlError::Snapshot(_)) => Response::fault(500, e.to_string()),
        Err(e) => Response::fault(500, e.to_string()),
    }
}

/// `PUT /actions`'s body (Firecracker's).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    action_type: String,
}

/// Firecracker's actions, each answered with why it does not apply to this VMM (none has a
/// counterpart here yet), so that a client written for Firecracker learns what to do.
fn action(body: &[u8]) -> Response {
    let body: ActionBody = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => return Response::fault(400, format!("bad body for PUT /actions: {e}")),
    };
    let why = match body.action_type.as_str() {
        "InstanceStart" => "the VM starts with `fluke-vmm run`; a restored one waits for PATCH /vm {\"state\": \"Resumed\"}",
        "SendCtrlAltDel" => "the VM has no i8042 keyboard controller to send it to",
        "FlushMetrics" => "fluke-vmm keeps no metrics file (`--stats-json` writes the run's statistics at its end)",
        other => {
            return Response::fault(
                400,
                format!("unknown action_type {other:?} (Firecracker's are InstanceStart, SendCtrlAltDel, FlushMetrics)"),
            )
        }
    };
    Response::fault(400, format!("{}: {why}", body.action_type))
}

fn patch_vm(body: &[u8], control: &VmControl) -> Response {
    let wanted: VmStateBody = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => {
            const EXPECTED: &str = r#"{"state": "Paused" or "Resumed"}"#;
            return Response::fault(
                400,
                format!("bad body for PATCH /vm (expected {EXPECTED}): {e}"),
            );
        }
    };
    let done = match wanted.state {
        WantedState::Paused => control.pause(),
        WantedState::Resumed => control.resume(),
    };
    match done {
        Ok(()) => Response::no_content(),
        Err(ControlError::Ended) => Response::fault(409, "the VM has ended"),
        Err(e) => Response::fault(500, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, path: &str, body: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            body: body.as_bytes().to_vec(),
            keep_alive: false,
        }
    }

    fn info() -> InstanceInfo {
        InstanceInfo {
            id: "test-vm".into(),
            platform: "kvm",
            vcpus: 1,
            memory_mib: 128,
        }
    }

    #[test]
    fn paths_methods_and_bodies_are_checked_before_the_vm_is_asked() {
        let control = VmControl::default();
        let status = |m: &str, p: &str, b: &str| route(&request(m, p, b), &info(), &control).status;
        assert_eq!(status("GET", "/", ""), 200);
        assert_eq!(status("DELETE", "/", ""), 405);
        assert_eq!(status("GET", "/vm", ""), 405);
        assert_eq!(status("GET", "/nowhere", ""), 404);
        assert_eq!(status("GET", "/snapshot/create", ""), 405);
        for bad in [
            "{}",
            "{\"snapshot_path\": \"/a\"}",
            "{\"snapshot_dir\": \"/d\", \"snapshot_path\": \"/a\", \"mem_file_path\": \"/b\"}",
            "{\"snapshot_dir\": \"/d\", \"snapshot_type\": \"Diff\"}",
            "{\"snapshot_dir\": 3}",
        ] {
            assert_eq!(status("PUT", "/snapshot/create", bad), 400, "{bad}");
        }
        // A VM that is not paused is not snapshotted.
        assert_eq!(
            status(
                "PUT",
                "/snapshot/create",
                "{\"snapshot_dir\": \"/tmp/never\"}"
            ),
            400
        );
        for bad in [
            "",
            "{",
            "[]",
            "{\"state\": \"Asleep\"}",
            "{\"state\": \"Paused\", \"x\": 1}",
        ] {
            assert_eq!(status("PATCH", "/vm", bad), 400, "{bad}");
        }
        for action in ["InstanceStart", "SendCtrlAltDel", "FlushMetrics", "Reboot"] {
            let body = format!("{{\"action_type\": \"{action}\"}}");
            let r = route(&request("PUT", "/actions", &body), &info(), &control);
            assert_eq!(r.status, 400, "{action}");
            assert!(r.body.unwrap()["fault_message"]
                .as_str()
                .unwrap()
                .contains(action));
        }
        assert_eq!(status("PUT", "/actions", "{}"), 400);
        assert_eq!(status("GET", "/actions", ""), 405);
        let r = route(&request("GET", "/", ""), &info(), &control);
        let body = r.body.unwrap();
        assert_eq!(body["state"], "Not started");
        assert_eq!(body["id"], "test-vm");
        assert_eq!(body["memory_mib"], 128);
        control.ended();
        assert_eq!(status("PATCH", "/vm", "{\"state\": \"Paused\"}"), 409);
        let r = route(&request("PUT", "/vm", ""), &info(), &control);
        assert_eq!(r.allow, Some("PATCH"));
    }
}
