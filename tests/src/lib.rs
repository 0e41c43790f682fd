//! The end-to-end test harness: private network namespaces, TAPs inside them, kernel
//! peers, and the root rule.
//!
//! # Network rule
//! Every test that touches a real link runs in [`in_netns`]: a fresh thread that calls
//! `unshare(CLONE_NEWNET)`, so it and every thread or process it starts live in a network
//! namespace of their own, holding only `lo` and the TAP the test makes. The kernel side
//! of the TAP gets [`KERNEL_ADDR`], the stack [`STACK_ADDR`]; no route leads anywhere
//! else, so no frame can leave. The namespace vanishes when the thread ends and the TAP
//! is closed.
//!
//! # Root rule
//! Namespaces and TAPs need root. Test binaries build their tests with [`root`] and
//! [`plain`] and run them through [`main`] (they use `harness = false`, with
//! libtest-mimic). Without root, root tests are reported as ignored, and a banner counts
//! them; with `TAPNET_REQUIRE_ROOT=1` set (CI sets it) they fail instead.

pub mod raw;

use std::io::{self, Read};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

pub use libtest_mimic::Failed;
use libtest_mimic::{Arguments, Trial};
use nix::sched::{CloneFlags, unshare};
use nix::unistd::geteuid;

/// The kernel's address on the test TAP.
pub const KERNEL_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// The tapnet stack's address on the test TAP.
pub const STACK_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
/// The environment variable that turns a root test's skip into a failure.
pub const REQUIRE_ROOT: &str = "TAPNET_REQUIRE_ROOT";

/// What a test returns.
pub type TestResult = Result<(), Failed>;

/// A test that needs no privileges.
pub fn plain(name: &str, test: fn() -> TestResult) -> Trial {
    Trial::test(name, test)
}

/// A test that needs root (a namespace, a TAP). See the module docs for the root rule.
pub fn root(name: &str, test: fn() -> TestResult) -> Trial {
    if geteuid().is_root() {
        Trial::test(name, test)
    } else if std::env::var_os(REQUIRE_ROOT).is_some_and(|v| v != "0") {
        Trial::test(name, || {
            Err(format!("this test needs root, and {REQUIRE_ROOT} forbids skipping it").into())
        })
    } else {
        Trial::test(name, test).with_ignored_flag(true)
    }
}

/// Runs the binary's tests, first counting aloud the root tests that are skipped.
pub fn main(trials: Vec<Trial>) -> ! {
    let args = Arguments::from_args();
    let skipped = trials.iter().filter(|t| t.has_ignored_flag()).count();
    let banner = || {
        if skipped > 0 && !args.ignored && !args.include_ignored {
            eprintln!(
                "\n*** SKIPPED {skipped} test(s) that need root (network namespaces, TAP devices). \
                 Run as root to include them; CI does, with {REQUIRE_ROOT}=1. ***\n"
            );
        }
    };
    banner();
    let conclusion = libtest_mimic::run(&args, trials);
    banner();
    conclusion.exit()
}

/// Runs `f` on a new thread inside a new, private network namespace with `lo` up.
pub fn in_netns<T: Send>(f: impl FnOnce() -> Result<T, Failed> + Send) -> Result<T, Failed> {
    thread::scope(|scope| {
        scope
            .spawn(|| {
                unshare(CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("unshare(CLONE_NEWNET): {e}"))?;
                ip(&["link", "set", "lo", "up"])?;
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Runs `ip ARGS...` in the calling thread's namespace; fails with its stderr.
pub fn ip(args: &[&str]) -> TestResult {
    let out = run(Command::new("ip").args(args), Duration::from_secs(10))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )
        .into())
    }
}

/// Gives the TAP `name` the kernel-side address [`KERNEL_ADDR`]/24 and sets it up.
pub fn kernel_side_up(name: &str) -> TestResult {
    ip(&["addr", "add", &format!("{KERNEL_ADDR}/24"), "dev", name])?;
    ip(&["link", "set", name, "up"])
}

/// The kernel's `ping` at the stack ([`STACK_ADDR`]), from inside the test's namespace:
/// `count` requests 0.2 s apart, each waited for 2 s, with `-s size` when given.
pub fn kernel_ping(count: u32, size: Option<usize>) -> Result<Output, Failed> {
    let mut cmd = Command::new("ping");
    cmd.args(["-c", &count.to_string(), "-i", "0.2", "-W", "2"]);
    if let Some(size) = size {
        cmd.args(["-s", &size.to_string()]);
    }
    cmd.arg(STACK_ADDR.to_string());
    run(&mut cmd, Duration::from_secs(5 + 3 * u64::from(count)))
}

/// Runs a command to completion, killing it if it outlives `timeout`.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<Output, Failed> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn {cmd:?}: {e}"))?;
    wait_bounded(child, timeout).map_err(|e| format!("{cmd:?}: {e}").into())
}

/// [`run`], as a test reads it: the exit code (-1 if killed), stdout, stderr.
pub fn run_text(cmd: &mut Command, timeout: Duration) -> Result<(i32, String, String), Failed> {
    let out = run(cmd, timeout)?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Waits for `child` for at most `timeout`, then kills it. Output is collected either way,
/// by threads that drain the pipes meanwhile, so a child that prints more than a pipe
/// holds does not stall.
pub fn wait_bounded(mut child: Child, timeout: Duration) -> io::Result<Output> {
    fn drain(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<Vec<u8>> {
        thread::spawn(move || {
            let mut out = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut out);
            }
            out
        })
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            child.kill()?;
            break child.wait()?;
        }
        thread::sleep(Duration::from_millis(10));
    };
    // A grandchild holding the pipes open would keep the drains going; they end when it
    // does. The child itself has exited here.
    let out = Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    };
    if timed_out {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "still running after {timeout:?}, killed; stdout: {} stderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ));
    }
    Ok(out)
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) -> TestResult {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}").into());
        }
        thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// A temporary directory removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// Makes a fresh directory under the system's temp dir.
    pub fn new(tag: &str) -> io::Result<TempDir> {
        let path = std::env::temp_dir().join(format!(
            "tapnet-{tag}-{}-{}",
            std::process::id(),
            unique_suffix()
        ));
        std::fs::create_dir_all(&path)?;
        Ok(TempDir(path))
    }

    /// A path inside the directory.
    pub fn join(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn unique_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

/// Asserts, as a test failure rather than a panic, with a message or with the
/// condition's own text.
#[macro_export]
macro_rules! check {
    ($cond:expr $(,)?) => {
        if !$cond {
            return Err(concat!("check failed: ", stringify!($cond)).into());
        }
    };
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+).into());
        }
    };
}

/// The frames of a pcap file, in order.
pub fn pcap_frames(path: &std::path::Path) -> Result<Vec<Vec<u8>>, Failed> {
    let file = std::fs::File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let mut reader = pcap_file::pcap::PcapReader::new(file)
        .map_err(|e| format!("{} is not a pcap file: {e}", path.display()))?;
    let mut frames = Vec::new();
    while let Some(packet) = reader.next_packet() {
        let packet = packet.map_err(|e| format!("{}: bad record: {e}", path.display()))?;
        frames.push(packet.data.into_owned());
    }
    Ok(frames)
}
