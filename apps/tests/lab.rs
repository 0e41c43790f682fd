//! The Vagrant lab (`vagrant/`): the Vagrantfile validates, and `vagrant/lab` builds the
//! two-host topology with network namespaces, carries a kernel client's HTTP request to
//! `tapnet http` behind the bridge, reports its state and tears everything down.
//!
//! The lab script makes its own namespaces (named with a prefix unique to the test).
//! It is run from inside the test's own private namespace all the same, so that even a
//! script that strayed could only touch that namespace, and so the test can check that
//! the "host" the script saw was left exactly as it was.

mod common;

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::TAPNET;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tapnet_tests::{
    Failed, REQUIRE_ROOT, TempDir, TestResult, check, in_netns, plain, root, run, run_text,
    wait_bounded,
};

/// The lab script under test.
const LAB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../vagrant/lab");
/// The directory holding the Vagrantfile.
const VAGRANT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../vagrant");
/// The lab's addresses, as `vagrant/lab --help` documents them.
const CLIENT_ADDR: &str = "10.10.0.10";
const SERVER_ADDR: &str = "10.10.0.20";
const TAPNET_ADDR: &str = "10.10.0.2";

fn main() {
    // Needs `vagrant`: without it the trial is skipped (ignored, with a note), unless
    // TAPNET_REQUIRE_ROOT is set, as in CI, which installs vagrant; then it fails.
    let validate = plain("vagrantfile_validates", vagrant_validate);
    let validate = if has_vagrant() {
        validate
    } else if std::env::var_os(REQUIRE_ROOT).is_some_and(|v| v != "0") {
        plain("vagrantfile_validates", || {
            Err(format!(
                "vagrant is not installed (apt-get install vagrant), and {REQUIRE_ROOT} \
                 forbids skipping"
            )
            .into())
        })
    } else {
        eprintln!("note: vagrantfile_validates is skipped: vagrant is not installed");
        validate.with_ignored_flag(true)
    };
    tapnet_tests::main(vec![
        validate,
        plain("lab_help_and_usage_errors", help_and_usage),
        root(
            "lab_client_fetches_a_page_from_tapnet_http_behind_the_bridge",
            two_hosts,
        ),
        root("labs_with_different_prefixes_coexist", two_labs),
    ])
}

/// Is `vagrant` installed?
fn has_vagrant() -> bool {
    Command::new("vagrant")
        .arg("--version")
        .env("VAGRANT_CHECKPOINT_DISABLE", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `vagrant validate --ignore-provider` accepts the Vagrantfile: both machines, both
/// provider blocks, the provisioning scripts it names.
fn vagrant_validate() -> TestResult {
    let dot = TempDir::new("vagrant-dot")?;
    let out = run(
        Command::new("vagrant")
            .args(["validate", "--ignore-provider"])
            .current_dir(VAGRANT_DIR)
            // No update check over the network; no .vagrant/ left in the source tree.
            .env("VAGRANT_CHECKPOINT_DISABLE", "1")
            .env("VAGRANT_DOTFILE_PATH", dot.join("dot")),
        Duration::from_secs(120),
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    check!(
        out.status.success(),
        "vagrant validate failed: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    check!(
        stdout.contains("server") && stdout.contains("client"),
        "vagrant validate did not see the server and client machines:\n{stdout}"
    );
    Ok(())
}

/// `lab --help` documents the commands and addresses; a bad command or option exits 2.
fn help_and_usage() -> TestResult {
    let (code, out, _) = lab(&["--help"])?;
    check!(code == 0, "lab --help exited {code}");
    for want in [
        "up",
        "down",
        "status",
        "--prefix",
        "--user",
        "--vm",
        TAPNET_ADDR,
    ] {
        check!(
            out.contains(want),
            "lab --help does not mention {want}:\n{out}"
        );
    }
    for bad in [
        &["frobnicate"][..],
        &[],
        &["up", "--vm", "router"],
        &["up", "--prefix", "a/b"],
        &["up", "--prefix"],
    ] {
        let (code, _, err) = lab(bad)?;
        check!(code == 2, "lab {bad:?} exited {code}, not 2: {err}");
        check!(!err.is_empty(), "lab {bad:?} exited 2 without saying why");
    }
    Ok(())
}

/// The two-host topology: `lab up`; `tapnet http` on tap0 in the server namespace; a
/// kernel `curl` in the client namespace fetches its page across the bridge; `lab
/// status` reports the lab; `lab down` removes it (twice: it is idempotent); and the
/// namespace the script ran in is unchanged throughout.
fn two_hosts() -> TestResult {
    in_netns(|| {
        let before = host_view()?;
        let topo = Lab::up("nobody")?;
        check!(
            host_view()? == before,
            "lab up changed the namespace it ran in"
        );
        check!(
            netns_list()?.contains(&topo.server()) && netns_list()?.contains(&topo.client()),
            "lab up did not make {} and {}: {:?}",
            topo.server(),
            topo.client(),
            netns_list()?
        );
        let details = ip_out(&["-n", &topo.server(), "-d", "link", "show", "tap0"])?;
        check!(
            details.contains("user nobody") || details.contains("user 65534"),
            "tap0 is not owned by --user nobody: {details}"
        );

        let server = Server::start(&topo.server())?;
        server.wait_listening(&topo.client())?;
        let (code, page, err) = curl(
            &topo.client(),
            &["-sS", "--max-time", "10", &format!("http://{TAPNET_ADDR}/")],
        )?;
        check!(
            code == 0,
            "curl from {} failed ({code}): {err}",
            topo.client()
        );
        check!(
            page.contains("This connection, as tapnet sees it"),
            "not tapnet's built-in page: {page}"
        );
        // The page shows the connection from the server's side: tapnet's address, and
        // the client namespace's, so the request came across the bridge.
        check!(
            page.contains(&format!("<td>{TAPNET_ADDR}:80</td>")),
            "the page does not show tapnet's end {TAPNET_ADDR}:80: {page}"
        );
        check!(
            page.contains(&format!("<td>{CLIENT_ADDR}:")),
            "the page does not show the client {CLIENT_ADDR} as the peer: {page}"
        );
        check!(
            page.contains("<td>tapnet</td>"),
            "the page was not served by tapnet: {page}"
        );

        let (code, status, err) = lab(&["status", "--prefix", &topo.prefix])?;
        check!(
            code == 0,
            "lab status exited {code} while up: {status}{err}"
        );
        for want in [
            topo.server(),
            topo.client(),
            format!("{SERVER_ADDR}/24"),
            format!("{CLIENT_ADDR}/24"),
            "tap0: user nobody".into(),
            format!("processes: {}", server.pid()),
        ] {
            check!(
                status.contains(&want),
                "lab status lacks {want:?}:\n{status}"
            );
        }

        let (code, _, err) = server.stop()?;
        check!(code == 0, "tapnet http exited {code} on SIGTERM: {err}");

        topo.down()?;
        let names = netns_list()?;
        check!(
            !names.contains(&topo.server()) && !names.contains(&topo.client()),
            "lab down left namespaces behind: {names:?}"
        );
        let (code, status, _) = lab(&["status", "--prefix", &topo.prefix])?;
        check!(
            code != 0,
            "lab status exited 0 with the lab down:\n{status}"
        );
        check!(
            status.contains("not up"),
            "lab status does not say the lab is not up:\n{status}"
        );
        topo.down()?;
        check!(
            host_view()? == before,
            "the lab changed the namespace it ran in"
        );
        Ok(())
    })
}

/// Two labs with different prefixes, same addresses, side by side: each is up, and
/// taking one down leaves the other up.
fn two_labs() -> TestResult {
    in_netns(|| {
        let a = Lab::up("root")?;
        let b = Lab::up("root")?;
        for l in [&a, &b] {
            let (code, out, err) = lab(&["status", "--prefix", &l.prefix])?;
            check!(code == 0, "lab {} is not up: {out}{err}", l.prefix);
        }
        a.down()?;
        let (code, out, _) = lab(&["status", "--prefix", &a.prefix])?;
        check!(code != 0, "lab {} is still up after down: {out}", a.prefix);
        let (code, out, err) = lab(&["status", "--prefix", &b.prefix])?;
        check!(
            code == 0,
            "taking {} down took {} down too: {out}{err}",
            a.prefix,
            b.prefix
        );
        b.down()?;
        Ok(())
    })
}

/// A lab brought up by the test: `lab down` on drop, so a failing test leaves nothing.
struct Lab {
    prefix: String,
}

impl Lab {
    /// `lab up` with a prefix no other test run uses, tap0 owned by `user`.
    fn up(user: &str) -> Result<Lab, Failed> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let made = Lab {
            prefix: format!(
                "tl{}x{}-",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ),
        };
        let (code, out, err) = lab(&["up", "--prefix", &made.prefix, "--user", user])?;
        check!(code == 0, "lab up exited {code}: {out}{err}");
        check!(
            out.contains(&format!("lab {} is up", made.prefix)),
            "lab up did not say it is up: {out}"
        );
        Ok(made)
    }

    fn server(&self) -> String {
        format!("{}server", self.prefix)
    }

    fn client(&self) -> String {
        format!("{}client", self.prefix)
    }

    /// `lab down`, which must succeed.
    fn down(&self) -> TestResult {
        let (code, out, err) = lab(&["down", "--prefix", &self.prefix])?;
        check!(code == 0, "lab down exited {code}: {out}{err}");
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = lab(&["down", "--prefix", &self.prefix]);
    }
}

/// `tapnet http` (built-in page) on tap0 as 10.10.0.2/24 in the server namespace.
/// Killed on drop.
struct Server {
    child: Option<Child>,
    dir: TempDir,
}

impl Server {
    fn start(ns: &str) -> Result<Server, Failed> {
        let dir = TempDir::new("lab-http")?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns, TAPNET, "http", "--tap", "tap0"])
            .args(["--addr", &format!("{TAPNET_ADDR}/24")])
            .stdin(Stdio::null())
            .stdout(File::create(dir.join("stdout"))?)
            .stderr(File::create(dir.join("stderr"))?)
            .spawn()
            .map_err(|e| format!("spawn ip netns exec {ns} tapnet http: {e}"))?;
        Ok(Server {
            child: Some(child),
            dir,
        })
    }

    /// `ip netns exec` execs tapnet, so this is tapnet's pid.
    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    /// Waits (bounded) until a connection from the client namespace gets an answer.
    fn wait_listening(&self, client: &str) -> TestResult {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (code, _, err) = curl(
                client,
                &[
                    "-sS",
                    "-o",
                    "/dev/null",
                    "--connect-timeout",
                    "1",
                    "--max-time",
                    "2",
                    &format!("http://{TAPNET_ADDR}/"),
                ],
            )?;
            if code == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "tapnet http on {TAPNET_ADDR} did not answer within 20 s (curl: {err}); \
                     tapnet said: {}",
                    self.stderr()
                )
                .into());
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, then a bounded wait: (exit code, stdout, stderr).
    fn stop(mut self) -> Result<(i32, String, String), Failed> {
        let child = self.child.take().ok_or("tapnet http is not running")?;
        let signalled = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let out = wait_bounded(child, Duration::from_secs(10))?;
        signalled?;
        let stdout = std::fs::read_to_string(self.dir.join("stdout")).unwrap_or_default();
        Ok((out.status.code().unwrap_or(-1), stdout, self.stderr()))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `vagrant/lab ARGS` (bounded): exit code, stdout, stderr.
fn lab(args: &[&str]) -> Result<(i32, String, String), Failed> {
    check!(Path::new(LAB).exists(), "{LAB} is missing");
    run_text(
        Command::new(LAB).args(args).env_remove("LAB_PREFIX"),
        Duration::from_secs(60),
    )
}

/// `curl ARGS` inside namespace `ns` (bounded): exit code, stdout, stderr.
fn curl(ns: &str, args: &[&str]) -> Result<(i32, String, String), Failed> {
    run_text(
        Command::new("ip")
            .args(["netns", "exec", ns, "curl"])
            .args(args),
        Duration::from_secs(30),
    )
}

/// `ip ARGS` (bounded), its stdout.
fn ip_out(args: &[&str]) -> Result<String, Failed> {
    let out = run(Command::new("ip").args(args), Duration::from_secs(10))?;
    check!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The named network namespaces.
fn netns_list() -> Result<Vec<String>, Failed> {
    Ok(ip_out(&["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect())
}

/// The calling thread's namespace as the script could change it: links, addresses,
/// routes.
fn host_view() -> Result<String, Failed> {
    Ok([
        ip_out(&["-br", "link"])?,
        ip_out(&["-br", "addr"])?,
        ip_out(&["route", "show", "table", "all"])?,
    ]
    .join("\n"))
}
