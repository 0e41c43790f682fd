//! `tapnet ss`: the socket table of running tapnet stacks, in the manner of `ss -tn`.
//!
//! It lists the control sockets in [`control::dir`] (`<device>.<pid>.sock`), skips and
//! removes stale ones (the process is gone, or nobody answers), asks each stack that
//! `--tap` / `--pid` select for its table, and prints it: State, Recv-Q, Send-Q, Local
//! Address:Port, Peer Address:Port, one line per socket, under a header line naming the
//! stack. Without `-l` or `-a` it shows connections only, as `ss` does; `-l` shows
//! listeners only, `-a` both. `-i` adds a line of details per connection. A connection
//! left in CLOSE-WAIT longer than the stack's warning threshold is marked `CLOSE-WAIT!`.
//! `--json` prints the selected entries as one JSON array instead (see `docs/ss.md`).

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::control::{self, Entry, Info, Report};

/// How long a stack has to answer.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Options of `tapnet ss`.
#[derive(Args, Debug)]
#[command(after_help = "\
Each running tapnet process serves a control socket in $XDG_RUNTIME_DIR/tapnet/ (or
/run/tapnet/ without XDG_RUNTIME_DIR), readable by its owner only; ss asks every one
it finds, or the one --tap or --pid picks. Recv-Q and Send-Q are bytes received and
not read, and sent and not acknowledged; for a listener, connections waiting to be
accepted and the backlog. CLOSE-WAIT! marks a connection whose peer closed longer ago
than the stack's --close-wait-warning while the application has not closed its side.
Exit status: 0, or 1 when no running stack matches or one does not answer.

Example:
  tapnet echo --tap tap0 &
  nc 10.0.0.2 7 &
  tapnet ss -a -i
  tapnet ss --tap tap0 --json | jq '.[] | select(.state == \"CLOSE-WAIT\")'")]
pub struct Opts {
    /// Only the stack on this TAP
    #[arg(long, value_name = "NAME", conflicts_with = "pid")]
    pub tap: Option<String>,
    /// Only the stack of this process
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// Show details per connection: rtt/rto, windows, retransmissions, keepalive,
    /// linger, time in state, zero-window probes
    #[arg(short = 'i', long = "info")]
    pub info: bool,
    /// Show listening sockets only
    #[arg(short = 'l', long = "listening", conflicts_with = "all")]
    pub listening: bool,
    /// Show listening sockets and connections
    #[arg(short = 'a', long = "all")]
    pub all: bool,
    /// Print the entries as a JSON array, for scripts (field names in docs/ss.md)
    #[arg(long)]
    pub json: bool,
}

/// Runs `tapnet ss`.
pub fn run(args: Opts) -> io::Result<ExitCode> {
    let dir = control::dir();
    let which = match (&args.tap, args.pid) {
        (Some(tap), _) => format!(" on {tap}"),
        (None, Some(pid)) => format!(" in process {pid}"),
        (None, None) => String::new(),
    };
    let none = || {
        eprintln!(
            "tapnet ss: no running tapnet stack{which}: no control socket in {}",
            dir.display()
        );
        Ok(ExitCode::FAILURE)
    };
    let found = find(&dir, &args)?;
    let mut reports = Vec::new();
    let mut failed = false;
    for (tap, pid, path) in found {
        match control::query(&path, QUERY_TIMEOUT) {
            Ok(report) => reports.push(report),
            // Nobody serves it: a process that died without removing it.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
                ) =>
            {
                log::info!("removing stale control socket {}", path.display());
                let _ = fs::remove_file(&path);
            }
            Err(e) => {
                eprintln!(
                    "tapnet ss: the stack on {tap} (pid {pid}) did not answer at {}: {e}",
                    path.display()
                );
                failed = true;
            }
        }
    }
    if reports.is_empty() && !failed {
        return none();
    }
    let show = |e: &Entry| match (args.all, args.listening) {
        (true, _) => true,
        (false, true) => e.is_listener(),
        (false, false) => !e.is_listener(),
    };
    if args.json {
        let entries: Vec<&Entry> = reports
            .iter()
            .flat_map(|r| &r.sockets)
            .filter(|e| show(e))
            .collect();
        let text = serde_json::to_string_pretty(&entries).map_err(io::Error::other)?;
        say!("{text}");
    } else {
        for report in &reports {
            say!("{}", table(report, &show, args.info));
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The control sockets in `dir` that the options select, as (device, pid, path), in
/// device and pid order. Sockets of processes that are gone are removed on the way.
fn find(dir: &Path, args: &Opts) -> io::Result<Vec<(String, u32, PathBuf)>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("listing {}: {e}", dir.display()),
            ));
        }
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some((tap, pid)) = name.to_str().and_then(control::parse_name) else {
            continue;
        };
        let path = entry.path();
        if !alive(pid) {
            log::info!("removing stale control socket {}", path.display());
            let _ = fs::remove_file(&path);
            continue;
        }
        if args.tap.as_ref().is_some_and(|t| *t != tap) || args.pid.is_some_and(|p| p != pid) {
            continue;
        }
        found.push((tap, pid, path));
    }
    found.sort();
    Ok(found)
}

/// Whether process `pid` exists (in this pid namespace).
fn alive(pid: u32) -> bool {
    pid != 0 && Path::new(&format!("/proc/{pid}")).exists()
}

/// The state as `ss` abbreviates it.
fn ss_state(state: &str) -> &str {
    match state {
        "ESTABLISHED" => "ESTAB",
        "SYN-RECEIVED" => "SYN-RECV",
        "CLOSED" => "UNCONN",
        other => other,
    }
}

/// One stack's table: a header line naming the stack, the column titles, and a line (two
/// with `info`) per socket that `show` selects, in aligned columns.
fn table(report: &Report, show: &dyn Fn(&Entry) -> bool, info: bool) -> String {
    let warning = Duration::from_secs_f64(report.close_wait_warning_ms / 1000.0);
    let mut rows = vec![[
        "State".to_string(),
        "Recv-Q".into(),
        "Send-Q".into(),
        "Local Address:Port".into(),
        "Peer Address:Port".into(),
    ]];
    let mut details = vec![None];
    let mut overdue = false;
    for e in report.sockets.iter().filter(|e| show(e)) {
        let mut state = ss_state(&e.state).to_string();
        if e.close_wait_overdue {
            state.push('!');
            overdue = true;
        }
        // A listener has no peer: any address, any port, as `ss` prints it.
        let peer = e.peer.clone().unwrap_or_else(|| "0.0.0.0:*".into());
        rows.push([
            state,
            e.recv_q.to_string(),
            e.send_q.to_string(),
            e.local.clone(),
            peer,
        ]);
        details.push(if info {
            e.info.as_ref().map(|i| (e, i))
        } else {
            None
        });
    }
    let mut width = [0; 5];
    for row in &rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = format!("tapnet on {}, pid {}", report.tap, report.pid);
    for (row, detail) in rows.iter().zip(details) {
        let _ = write!(
            out,
            "\n{:<w0$} {:>w1$} {:>w2$} {:<w3$} {}",
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            w0 = width[0],
            w1 = width[1],
            w2 = width[2],
            w3 = width[3],
        );
        if let Some((entry, info)) = detail {
            let _ = write!(out, "\n\t {}", describe(entry, info, warning));
        }
    }
    if overdue {
        let _ = write!(
            out,
            "\n! in CLOSE-WAIT longer than {}: the peer closed, the application has not",
            duration(warning)
        );
    }
    out.trim_end().to_string()
}

/// The `-i` line of one connection, in `ss -i`'s key:value manner.
fn describe(entry: &Entry, info: &Info, warning: Duration) -> String {
    let ms = |v: f64| Duration::from_secs_f64(v.max(0.0) / 1000.0);
    let mut parts = Vec::new();
    match (info.rtt_ms, info.rto_ms) {
        (Some(rtt), Some(rto)) => parts.push(format!("rtt:{rtt:.3}ms rto:{rto:.0}ms")),
        (Some(rtt), None) => parts.push(format!("rtt:{rtt:.3}ms")),
        _ => parts.push("rtt:- rto:-".into()),
    }
    parts.push(format!(
        "snd_wnd:{} rcv_wnd:{}",
        info.peer_window, info.recv_window
    ));
    parts.push(format!(
        "rcv_buf:{} snd_buf:{}",
        info.read_buffer, info.write_buffer
    ));
    parts.push(format!(
        "retrans:{} fast:{}",
        info.retransmits, info.fast_retransmits
    ));
    parts.push(format!("zwp:{}", info.zero_window_probes));
    parts.push(match &info.keepalive {
        Some(ka) => format!(
            "keepalive:{}/{}/{} ka_probes:{}",
            duration(ms(ka.idle_ms)),
            duration(ms(ka.interval_ms)),
            ka.count,
            info.keepalive_probes
        ),
        None => "keepalive:off".into(),
    });
    parts.push(match info.linger_ms {
        Some(l) => format!("linger:{}", duration(ms(l))),
        None => "linger:off".into(),
    });
    parts.push(format!(
        "segs_in:{} segs_out:{}",
        info.segments_in, info.segments_out
    ));
    parts.push(format!("in_state:{}", duration(ms(info.time_in_state_ms))));
    if entry.orphan {
        parts.push("orphan".into());
    }
    if entry.close_wait_overdue {
        parts.push(format!(
            "close-wait {} > {}",
            duration(ms(info.time_in_state_ms)),
            duration(warning)
        ));
    }
    parts.join(" ")
}

/// A duration as people read it: `250ms`, `1.5s`, `45s`, `3m05s`.
fn duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 1.0 {
        format!("{}ms", d.as_millis())
    } else if secs < 10.0 {
        format!("{secs:.1}s")
    } else if secs < 60.0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(state: &str, local: &str, peer: Option<&str>, info: Option<Info>) -> Entry {
        Entry {
            tap: "tap0".into(),
            pid: 42,
            state: state.into(),
            recv_q: 0,
            send_q: if peer.is_none() { 128 } else { 12345 },
            local: local.into(),
            peer: peer.map(String::from),
            close_wait_overdue: state == "CLOSE-WAIT",
            orphan: false,
            info,
        }
    }

    fn info() -> Info {
        Info {
            time_in_state_ms: 45_200.0,
            rtt_ms: Some(0.412),
            rto_ms: Some(200.0),
            recv_window: 65535,
            peer_window: 64240,
            read_buffer: 65536,
            write_buffer: 65536,
            retransmits: 2,
            fast_retransmits: 1,
            keepalive_probes: 0,
            zero_window_probes: 1,
            segments_in: 10,
            segments_out: 12,
            keepalive: None,
            linger_ms: Some(0.0),
            nodelay: true,
        }
    }

    #[test]
    fn the_table_is_aligned_and_marks_an_overdue_close_wait() {
        let report = Report {
            tap: "tap0".into(),
            pid: 42,
            close_wait_warning_ms: 30_000.0,
            sockets: vec![
                entry("LISTEN", "0.0.0.0:7", None, None),
                entry(
                    "ESTABLISHED",
                    "10.0.0.2:7",
                    Some("10.0.0.1:50000"),
                    Some(info()),
                ),
                entry(
                    "CLOSE-WAIT",
                    "10.0.0.2:7",
                    Some("10.0.0.1:50001"),
                    Some(info()),
                ),
            ],
        };
        let text = table(&report, &|_| true, true);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "tapnet on tap0, pid 42");
        assert_eq!(
            lines[1],
            "State       Recv-Q Send-Q Local Address:Port Peer Address:Port"
        );
        assert_eq!(
            lines[2],
            "LISTEN           0    128 0.0.0.0:7          0.0.0.0:*"
        );
        assert_eq!(
            lines[3],
            "ESTAB            0  12345 10.0.0.2:7         10.0.0.1:50000"
        );
        assert!(lines[4].starts_with("\t rtt:0.412ms rto:200ms snd_wnd:64240 rcv_wnd:65535"));
        assert!(lines[4].contains("retrans:2 fast:1 zwp:1 keepalive:off linger:0ms"));
        assert!(lines[4].contains("in_state:45s"));
        assert!(!lines[4].contains("close-wait"));
        assert!(lines[5].starts_with("CLOSE-WAIT!      0  12345 10.0.0.2:7"));
        assert!(lines[6].ends_with("close-wait 45s > 30s"), "{}", lines[6]);
        assert!(lines[7].starts_with("! in CLOSE-WAIT longer than 30s"));
        assert_eq!(lines.len(), 8);
        // Without -i: no detail lines; listeners filtered out.
        let text = table(&report, &|e| !e.is_listener(), false);
        assert_eq!(text.lines().count(), 5, "{text}");
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(duration(Duration::from_millis(250)), "250ms");
        assert_eq!(duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(duration(Duration::from_secs(45)), "45s");
        assert_eq!(duration(Duration::from_secs(185)), "3m05s");
    }
}
