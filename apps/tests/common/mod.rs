//! What the app tests share: the `tapnet` binary run as a user runs it, on `tap0` inside
//! the test's own namespace, or with `--kernel`.

#![allow(dead_code)]

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tapnet_tests::{Failed, TempDir, eventually, kernel_side_up, run_text, wait_bounded};

/// The binary under test.
pub const TAPNET: &str = env!("CARGO_BIN_EXE_tapnet");

/// Runs `tapnet ARGS` to completion (killed after a minute): exit code, stdout, stderr.
pub fn tapnet(args: &[&str]) -> Result<(i32, String, String), Failed> {
    tapnet_within(args, Duration::from_secs(60))
}

/// [`tapnet`], killed after `timeout`.
pub fn tapnet_within(args: &[&str], timeout: Duration) -> Result<(i32, String, String), Failed> {
    run_text(Command::new(TAPNET).args(args), timeout)
}

/// Makes tap0 and gives its kernel side 10.0.0.1/24 before tapnet opens it, so kernel
/// peers can bind there first. Call inside `in_netns`.
pub fn tap_up() -> Result<(), Failed> {
    tapnet_tests::ip(&["tuntap", "add", "dev", "tap0", "mode", "tap"])?;
    kernel_side_up("tap0")
}

/// A running `tapnet` app. Its stdout and stderr go to files (a pipe nobody reads could
/// fill and stall it). Dropped without [`App::stop`], it is killed.
pub struct App {
    child: Option<Child>,
    dir: TempDir,
}

impl App {
    /// Starts `tapnet ARGS --tap tap0 --addr 10.0.0.2/24` and waits until the TAP exists
    /// and its kernel side has 10.0.0.1/24. Call inside `in_netns`.
    pub fn on_tap(args: &[&str]) -> Result<App, Failed> {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--tap", "tap0", "--addr", "10.0.0.2/24"]);
        let app = App::spawn(&all)?;
        eventually(Duration::from_secs(10), "tap0 to appear", || {
            tapnet_tests::ip(&["link", "show", "tap0"]).is_ok()
        })?;
        kernel_side_up("tap0")?;
        Ok(app)
    }

    /// Starts `tapnet ARGS` as it is (with `--kernel`, say).
    pub fn spawn(args: &[&str]) -> Result<App, Failed> {
        let dir = TempDir::new("app")?;
        let child = Command::new(TAPNET)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(File::create(dir.join("stdout"))?)
            .stderr(File::create(dir.join("stderr"))?)
            .spawn()?;
        Ok(App {
            child: Some(child),
            dir,
        })
    }

    /// Waits until `addr` accepts a connection (the app is listening).
    pub fn wait_listening(&self, addr: SocketAddr) -> Result<(), Failed> {
        eventually(
            Duration::from_secs(10),
            &format!("{addr} to listen"),
            || TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok(),
        )
    }

    /// What it printed so far: (stdout, stderr).
    pub fn output(&self) -> (String, String) {
        let read = |name| std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        (read("stdout"), read("stderr"))
    }

    /// Sends SIGTERM, waits (bounded) for it to exit, and returns its status and output.
    pub fn stop(mut self) -> Result<(Output, String, String), Failed> {
        let child = self.child.take().expect("running");
        // Reap it even if the signal could not be sent (it had exited already).
        let signalled = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let out = wait_bounded(child, Duration::from_secs(10))?;
        signalled?;
        let (stdout, stderr) = self.output();
        Ok((out, stdout, stderr))
    }

    /// Waits (bounded) for it to exit by itself.
    pub fn wait(mut self, timeout: Duration) -> Result<(Output, String, String), Failed> {
        let child = self.child.take().expect("running");
        let out = wait_bounded(child, timeout)?;
        let (stdout, stderr) = self.output();
        Ok((out, stdout, stderr))
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
