//! Named network namespaces that the bench makes, enters and always deletes, and the
//! links inside them.
//!
//! Every socket, TAP and veth of the bench lives in a namespace made here with
//! `ip netns add`, named `tapnet-bench-<pid>-<role>`: runs never collide, and a namespace
//! left behind by a run that was killed outright can be recognised and removed
//! ([`remove_stale`]). A [`Netns`] deletes its namespace when dropped, on every way out of
//! the bench, errors and panics included. No route leads out of any of them, so no frame
//! can leave the machine.
//!
//! A thread joins a namespace with `setns(2)`, and threads it starts are born there:
//! [`Netns::spawn`] starts a thread inside, and its [`Worker`] is joined with a time
//! limit, so no wait of the bench is unbounded.

use std::fs::File;
use std::io::Read;
use std::net::Ipv4Addr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use netdev::{Tap, TapOptions};
use nix::sched::{CloneFlags, setns};

use crate::BoxError;

/// Every namespace of the bench is named with this, then the pid, then its role.
const PREFIX: &str = "tapnet-bench-";
/// Where `ip netns add` keeps its namespaces.
const NETNS_DIR: &str = "/run/netns";
/// How long any one `ip` command, sysctl or thread start-up may take.
pub const SETUP_LIMIT: Duration = Duration::from_secs(10);

/// The IP MTU of every link the bench measures over.
pub const MTU: usize = 1500;
/// The kernel's side of a TAP.
pub const TAP_KERNEL: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// The userspace stack's side of a TAP (tapnet or raw smoltcp).
pub const TAP_STACK: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
/// The peer's end of the veth pair.
pub const VETH_PEER: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
/// The server's end of the veth pair.
pub const VETH_SERVER: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
/// The prefix length of both links.
pub const PREFIX_LEN: u8 = 24;

/// A network namespace made by `ip netns add`, deleted when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
    /// The namespace itself, for `setns`.
    file: File,
}

impl Netns {
    /// Makes the namespace `tapnet-bench-<pid>-<role>` and brings its `lo` up.
    pub fn create(role: &str) -> Result<Netns, BoxError> {
        let name = format!("{PREFIX}{}-{role}", std::process::id());
        ip(&["netns", "add", &name])?;
        let file = match File::open(Path::new(NETNS_DIR).join(&name)) {
            Ok(file) => file,
            Err(e) => {
                let _ = ip(&["netns", "delete", &name]);
                return Err(format!("open {NETNS_DIR}/{name}: {e}").into());
            }
        };
        // From here on, Drop deletes it.
        let ns = Netns { name, file };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name, as `ip netns list` shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME ARGS...`.
    pub fn ip(&self, args: &[&str]) -> Result<(), BoxError> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Starts a thread inside the namespace that runs `f`; its result comes back
    /// through [`Worker::join`]. A panic in `f` comes back as an error.
    pub fn spawn<T: Send + 'static>(
        &self,
        what: &str,
        f: impl FnOnce() -> Result<T, BoxError> + Send + 'static,
    ) -> Result<Worker<T>, BoxError> {
        let file = self.file.try_clone()?;
        let name = self.name.clone();
        let (tx, rx) = mpsc::channel();
        let handle = thread::Builder::new()
            .name(what.to_string())
            .spawn(move || {
                let result = catch_unwind(AssertUnwindSafe(|| {
                    setns(&file, CloneFlags::CLONE_NEWNET)
                        .map_err(|e| format!("setns into {name}: {e}"))?;
                    drop(file);
                    f()
                }));
                let result = result.unwrap_or_else(|panic| {
                    let msg = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic".into());
                    Err(format!("panicked: {msg}").into())
                });
                let _ = tx.send(result);
            })?;
        Ok(Worker {
            what: what.to_string(),
            rx,
            handle,
        })
    }

    /// Runs `f` on a thread inside the namespace and waits for it, at most `limit`.
    pub fn run<T: Send + 'static>(
        &self,
        what: &str,
        limit: Duration,
        f: impl FnOnce() -> Result<T, BoxError> + Send + 'static,
    ) -> Result<T, BoxError> {
        self.spawn(what, f)?.join(limit)
    }

    /// Sets a sysctl for this namespace only (`net.*` keys are per namespace), and
    /// checks that it took.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), BoxError> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let value = value.to_string();
        self.run("sysctl", SETUP_LIMIT, move || {
            std::fs::write(&path, &value).map_err(|e| format!("write {path}: {e}"))?;
            let now = std::fs::read_to_string(&path)?;
            if now.trim() != value {
                return Err(
                    format!("{path} reads {:?} after writing {value:?}", now.trim()).into(),
                );
            }
            Ok(())
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "delete", &self.name]) {
            eprintln!(
                "bench: warning: could not delete namespace {}: {e}",
                self.name
            );
        }
    }
}

/// A thread started by [`Netns::spawn`].
pub struct Worker<T> {
    what: String,
    rx: mpsc::Receiver<Result<T, BoxError>>,
    handle: thread::JoinHandle<()>,
}

impl<T> Worker<T> {
    /// Waits for the thread's result, at most `limit`. A thread that overruns is left
    /// behind (the bench's own I/O timeouts end it soon after) and reported as an error.
    pub fn join(self, limit: Duration) -> Result<T, BoxError> {
        match self.rx.recv_timeout(limit) {
            Ok(result) => {
                // It has sent its result, so it is about to end.
                let _ = self.handle.join();
                result.map_err(|e| format!("{}: {e}", self.what).into())
            }
            Err(RecvTimeoutError::Timeout) => {
                Err(format!("{}: still running after {limit:?}; left behind", self.what).into())
            }
            Err(RecvTimeoutError::Disconnected) => {
                Err(format!("{}: the thread ended without a result", self.what).into())
            }
        }
    }
}

/// Runs `ip ARGS...`, killing it if it takes longer than [`SETUP_LIMIT`]; fails with
/// its stderr.
pub fn ip(args: &[&str]) -> Result<(), BoxError> {
    let mut child = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run `ip` (iproute2): {e}"))?;
    let deadline = Instant::now() + SETUP_LIMIT;
    loop {
        if let Some(status) = child.try_wait()? {
            if status.success() {
                return Ok(());
            }
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr);
            }
            return Err(format!("ip {}: {}", args.join(" "), stderr.trim()).into());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("ip {}: no answer after {SETUP_LIMIT:?}", args.join(" ")).into());
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// Deletes the namespaces of earlier runs whose process is gone (killed before it could
/// clean up), and returns their names.
pub fn remove_stale() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !alive(pid) && ip(&["netns", "delete", &name]).is_ok() {
            removed.push(name);
        }
    }
    removed
}

/// Whether process `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the command name, which is in parentheses.
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// Opens the TAP `tap0` inside `ns` at [`MTU`] and gives its kernel side
/// [`TAP_KERNEL`]. The TAP vanishes when the returned device is dropped.
pub fn open_tap(ns: &Netns) -> Result<Tap, BoxError> {
    const NAME: &str = "tap0";
    let tap = ns.run("open-tap", SETUP_LIMIT, || {
        Ok(Tap::open(NAME, &TapOptions { mtu: Some(MTU) })?)
    })?;
    let mtu = MTU.to_string();
    ns.ip(&["link", "set", NAME, "mtu", &mtu])?;
    ns.ip(&[
        "addr",
        "add",
        &format!("{TAP_KERNEL}/{PREFIX_LEN}"),
        "dev",
        NAME,
    ])?;
    ns.ip(&["link", "set", NAME, "up"])?;
    Ok(tap)
}
