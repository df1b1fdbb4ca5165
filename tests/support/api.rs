//! Running fluke-vmm with its control API socket, its console collected as it comes, and
//! talking HTTP to it (tests/vm_api.rs, tests/vm_snapshot.rs).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{default_image, VMM};

/// A fluke-vmm with its API socket, its console collected as it comes.
pub struct LiveVm {
    pub sock: PathBuf,
    child: Child,
    console: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
    _dir: TempDir,
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("fluke-api-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl LiveVm {
    pub fn start(tag: &str, cmdline: &str) -> LiveVm {
        Self::start_with(
            tag,
            &["run".into(), default_image().into_os_string()],
            cmdline,
            &[],
        )
    }

    /// Starts `fluke-vmm ARGS... --api-sock S [--cmdline CMDLINE]` with extra environment.
    pub fn start_with(
        tag: &str,
        args: &[std::ffi::OsString],
        cmdline: &str,
        env: &[(&str, &str)],
    ) -> LiveVm {
        let dir = TempDir::new(tag);
        let sock = dir.0.join("api.sock");
        let mut cmd = Command::new(VMM);
        cmd.args(args)
            .args(["--timeout", "90", "--api-sock"])
            .arg(&sock);
        if !cmdline.is_empty() {
            cmd.args(["--cmdline", cmdline]);
        }
        let mut child = cmd
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start fluke-vmm");
        let console = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().unwrap();
        let c = Arc::clone(&console);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let mut c = c.lock().unwrap();
                c.push_str(&line);
                c.push('\n');
            }
        });
        let vm = LiveVm {
            child,
            sock,
            console,
            reader: Some(reader),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !vm.sock.exists() {
            assert!(Instant::now() < deadline, "the API socket never appeared");
            std::thread::sleep(Duration::from_millis(10));
        }
        vm
    }

    pub fn console(&self) -> String {
        self.console.lock().unwrap().clone()
    }

    pub fn wait_for(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.console().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "never printed {needle:?}:\n{}",
                self.console()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn ticks(&self) -> usize {
        self.console().matches("work: tick ").count()
    }

    /// Kills the VMM as `kill -9` would, and returns what it printed.
    pub fn kill(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.console()
    }

    /// Waits for the VMM to end without checking its socket: its exit status and console.
    pub fn wait(mut self) -> (i32, String) {
        let status = self.child.wait().unwrap();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        (status.code().unwrap_or(-1), self.console())
    }

    /// Waits for the VMM to end: its exit status and the whole console.
    pub fn finish(mut self) -> (i32, String) {
        let deadline = Instant::now() + Duration::from_secs(90);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("fluke-vmm did not end:\n{}", self.console());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        assert!(!self.sock.exists(), "the API socket was not removed");
        (status.code().unwrap_or(-1), self.console())
    }
}

/// One raw HTTP exchange: the status and body of the answer.
pub fn exchange(sock: &Path, raw: &[u8]) -> (u16, String) {
    let mut s = UnixStream::connect(sock).expect("connect to the API");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // The server may answer (and close) before it has read everything: a refused body.
    let _ = s.write_all(raw);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

pub fn request(sock: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    exchange(sock, raw.as_bytes())
}

pub fn pause(sock: &Path) {
    assert_eq!(
        request(sock, "PATCH", "/vm", r#"{"state": "Paused"}"#).0,
        204
    );
}

pub fn resume(sock: &Path) {
    assert_eq!(
        request(sock, "PATCH", "/vm", r#"{"state": "Resumed"}"#).0,
        204
    );
}

pub fn state(sock: &Path) -> String {
    let (status, body) = request(sock, "GET", "/", "");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("GET / is JSON");
    v["state"].as_str().unwrap_or("").to_string()
}

/// The ticks of a console: (index, checksum, guest ms).
pub fn ticks(console: &str) -> Vec<(u64, String, u64)> {
    console
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() == 7 && w[1] == "tick").then(|| {
                (
                    w[2].parse().unwrap(),
                    w[4].to_string(),
                    w[6].parse().unwrap(),
                )
            })
        })
        .collect()
}

/// The console's sequence without the clock: what must not change.
pub fn sequence(console: &str) -> Vec<(u64, String)> {
    ticks(console).into_iter().map(|(i, c, _)| (i, c)).collect()
}

/// An uninterrupted run of the same workload (no API): the reference sequence S.
pub fn reference(cmdline: &str) -> Vec<(u64, String)> {
    let run = super::vmm(&default_image(), &["--cmdline", cmdline]);
    assert_eq!(run.status, 0, "{run:?}");
    sequence(&run.console)
}

/// Waits (at most 10 s) for the VM to report `want` (a VM just started reports
/// "Not started" until its vCPU thread enters its run loop).
pub fn wait_state(sock: &Path, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = state(sock);
        if now == want {
            return;
        }
        assert!(Instant::now() < deadline, "state {now:?}, never {want:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}
