//! `tapnet sink` and `tapnet source`, each against the other running on the kernel, over
//! a TAP in a private namespace; with a corrupting link; and the verifier caught out by a
//! kernel client that flips one byte.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use common::{App, tapnet_within};
use tapnet_tests::{TestResult, check, eventually, in_netns, plain, root};

/// What a clean transfer sends: 64 MiB.
const CLEAN: (&str, u64) = ("64M", 64 << 20);
/// What a transfer over the corrupting link sends: 8 MiB, about 6000 full frames each
/// way, so some 60 of them damaged. (tapnet recovers from each lost segment slowly, so
/// a larger transfer takes minutes.)
const CORRUPT: (&str, u64) = ("8M", 8 << 20);

fn main() {
    tapnet_tests::main(vec![
        plain("help_runs_and_bad_values_exit_2", help_and_bad_values),
        root("sink_on_tapnet_checks_64m_from_a_kernel_source", || {
            sink_on_tapnet(CLEAN, &[])
        }),
        root("source_on_tapnet_sends_64m_to_a_kernel_sink", || {
            source_on_tapnet(CLEAN, &[])
        }),
        root(
            "sink_on_tapnet_gets_the_pattern_intact_over_a_1pct_corrupting_link",
            || sink_on_tapnet(CORRUPT, &["--corrupt", "1%"]),
        ),
        root(
            "source_on_tapnet_delivers_the_pattern_intact_over_a_1pct_corrupting_link",
            || source_on_tapnet(CORRUPT, &["--corrupt", "1%"]),
        ),
        root(
            "sink_reports_the_offset_of_one_flipped_byte_and_exits_1",
            flipped_byte,
        ),
    ])
}

/// Byte `i` of the pattern, written out again from its documented definition (a
/// SplitMix64 hash of `i / 8`, little-endian), so the test also pins the format.
fn pattern_byte(i: u64) -> u8 {
    let mut z = (i / 8)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(0x7461_706e_6574_0001);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)).to_le_bytes()[(i % 8) as usize]
}

/// Waits until the kernel, in this thread's namespace, listens on TCP `port`. (Probing
/// with a connection would use up a `--once` sink.)
fn wait_kernel_listening(port: u16) -> TestResult {
    let local = format!(":{port:04X}");
    eventually(
        Duration::from_secs(10),
        &format!("port {port} to listen"),
        || {
            std::fs::read_to_string("/proc/thread-self/net/tcp").is_ok_and(|t| {
                t.lines().skip(1).any(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.len() > 3 && f[1].ends_with(&local) && f[3] == "0A"
                })
            })
        },
    )
}

/// The sink's line for a transfer of `bytes`, from its stdout.
fn transfer_line(out: &str, bytes: u64) -> Option<&str> {
    out.lines()
        .find(|l| l.contains(&format!(": {bytes} bytes in ")))
}

fn help_and_bad_values() -> TestResult {
    for cmd in ["sink", "source"] {
        let (code, out, err) = tapnet_within(&[cmd, "--help"], Duration::from_secs(10))?;
        check!(code == 0, "{cmd} --help: exit {code}: {err}");
        for want in ["--kernel", "--tap", "--corrupt", "Example"] {
            check!(out.contains(want), "{cmd} --help lacks {want:?}:\n{out}");
        }
    }
    let (_, out, _) = tapnet_within(&["source", "--help"], Duration::from_secs(10))?;
    for want in ["--bytes", "--time", "--chunk", "100 MiB", "powers of 1024"] {
        check!(out.contains(want), "source --help lacks {want:?}:\n{out}");
    }
    let to = "10.0.0.1:5001";
    let cases: &[(&[&str], &str)] = &[
        (&["source", to, "--bytes", "12Q"], "unknown unit \"q\""),
        (&["source", to, "--bytes", "lots"], "invalid size"),
        (&["source", to, "--bytes", "99999999T"], "too large"),
        (&["source", to, "--chunk", "0"], "at least 1 byte"),
        (&["source", to, "--chunk", "1G"], "above 16M"),
        (&["source", to, "--time", "soon"], "invalid duration"),
        (&["source", to, "--time", "0"], "above zero"),
        (
            &["source", to, "--bytes", "1M", "--time", "1"],
            "cannot be used",
        ),
        (&["source", "somewhere"], "not IP:PORT"),
        (&["source"], "HOST:PORT"),
        (&["sink", "--port", "70000"], "70000"),
    ];
    for (args, why) in cases {
        let (code, _, err) = tapnet_within(args, Duration::from_secs(10))?;
        check!(code == 2, "{args:?}: exit {code}, not 2; stderr: {err}");
        check!(err.contains(why), "{args:?}: stderr lacks {why:?}: {err}");
        check!(!err.contains("panicked"), "{args:?} panicked: {err}");
    }
    Ok(())
}

/// (a) `tapnet sink` on the TAP (with `impair` options); `tapnet source --kernel` sends
/// it `size`.
fn sink_on_tapnet((size, bytes): (&str, u64), impair: &[&str]) -> TestResult {
    in_netns(|| {
        let mut args = vec!["sink"];
        args.extend(impair);
        let sink = App::on_tap(&args)?;
        sink.wait_listening("10.0.0.2:5001".parse()?)?;
        let (code, out, err) = tapnet_within(
            &["source", "--kernel", "10.0.0.2:5001", "--bytes", size],
            Duration::from_secs(120),
        )?;
        check!(code == 0, "source exit {code}: {out}{err}");
        check!(
            out.contains(&format!("sent {bytes} bytes in ")) && out.contains("Gbit/s"),
            "source output: {out}"
        );
        check!(
            out.contains("sink: pattern ok"),
            "source got no verdict: {out}"
        );
        let (status, out, err) = sink.stop()?;
        check!(status.status.success(), "sink exit {status:?}: {err}");
        let line = transfer_line(&out, bytes);
        check!(
            line.is_some_and(|l| l.ends_with(", pattern ok") && l.contains(" Gbit/s")),
            "sink line for the transfer: {line:?}\n{out}{err}"
        );
        check!(!out.contains("corrupt"), "sink output: {out}");
        Ok(())
    })
}

/// (b) `tapnet sink --kernel --once` on the kernel side; `tapnet source` on the TAP
/// (with `impair` options) sends it `size`.
fn source_on_tapnet((size, bytes): (&str, u64), impair: &[&str]) -> TestResult {
    in_netns(|| {
        common::tap_up()?;
        let sink = App::spawn(&["sink", "--kernel", "--once"])?;
        wait_kernel_listening(5001)?;
        let mut args = vec![
            "source",
            "10.0.0.1:5001",
            "--tap",
            "tap0",
            "--addr",
            "10.0.0.2/24",
            "--bytes",
            size,
        ];
        args.extend(impair);
        let (code, out, err) = tapnet_within(&args, Duration::from_secs(120))?;
        check!(code == 0, "source exit {code}: {out}{err}");
        check!(
            out.contains(&format!("sent {bytes} bytes in ")),
            "source output: {out}"
        );
        check!(
            out.contains("sink: pattern ok"),
            "source got no verdict: {out}"
        );
        let (status, out, err) = sink.wait(Duration::from_secs(10))?;
        check!(status.status.success(), "sink exit {status:?}: {out}{err}");
        let line = transfer_line(&out, bytes);
        check!(
            line.is_some_and(|l| l.starts_with("10.0.0.2:") && l.ends_with(", pattern ok")),
            "sink line for the transfer: {line:?}\n{out}{err}"
        );
        Ok(())
    })
}

/// A kernel client writes the pattern with one byte flipped; the sink must name it.
fn flipped_byte() -> TestResult {
    const LEN: u64 = 3 << 20;
    const AT: u64 = 1_234_567;
    in_netns(|| {
        let sink = App::spawn(&["sink", "--kernel", "--once"])?;
        wait_kernel_listening(5001)?;
        let mut data: Vec<u8> = (0..LEN).map(pattern_byte).collect();
        data[AT as usize] ^= 0x10;
        let mut conn = TcpStream::connect("127.0.0.1:5001")?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        conn.set_write_timeout(Some(Duration::from_secs(10)))?;
        conn.write_all(&data)?;
        conn.shutdown(Shutdown::Write)?;
        let mut verdict = String::new();
        conn.read_to_string(&mut verdict)?;
        check!(
            verdict == format!("corrupt at byte {AT}\n"),
            "verdict sent back: {verdict:?}"
        );
        let (status, out, err) = sink.wait(Duration::from_secs(10))?;
        check!(
            status.status.code() == Some(1),
            "sink exit {status:?}, not 1: {out}{err}"
        );
        check!(
            out.contains(&format!(": {LEN} bytes in "))
                && out.contains(&format!("corrupt at byte {AT}")),
            "sink output: {out}"
        );
        Ok(())
    })
}
