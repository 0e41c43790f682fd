//! `tapnet demo handshake`: the three-way handshake (RFC 9293 §3.5), with the options
//! each end offers in its SYN: MSS (RFC 9293 §3.7.1), window scale (RFC 7323 §2) and
//! SACK permitted (RFC 2018).

use std::io;
use std::process::ExitCode;
use std::time::Duration;

use stack::StackConfig;

use super::{DemoArgs, Lab, PORT, SERVER};

/// Runs the demo.
pub fn run(args: &DemoArgs) -> io::Result<ExitCode> {
    // A 1 MiB receive buffer needs a window scale of 5: 65535 << 5 covers it.
    let lab = Lab::new(args, |c: StackConfig| c.with_buffers(1 << 20, 256 << 10))?;
    let server_addr = SERVER;
    let listener = lab.server.listen(server_addr)?;
    lab.say(&format!(
        "The server listens on {server_addr}. Its listening socket has no peer yet: LISTEN."
    ));
    let Some(client) = &lab.client else {
        lab.say(&format!(
            "On the kernel side, run: nc 10.0.0.2 {PORT}  (and tcpdump -ni TAP port {PORT})"
        ));
        let (conn, peer) = listener.accept_timeout(Duration::from_secs(60))?;
        lab.say(&format!("{peer} completed the handshake."));
        conn.close()?;
        return lab.finish(&["A kernel client's SYN, our SYN-ACK, its ACK."]);
    };
    lab.say(
        "The client dials. Its SYN carries its initial sequence number (shown as 0: numbers \
         are relative) and its options: mss (the largest segment it accepts), ws (the shift \
         for its window field), sackOK (it understands selective ACKs).",
    );
    let conn = client.dial_timeout(server_addr, Duration::from_secs(5))?;
    let (accepted, _) = listener.accept_timeout(Duration::from_secs(5))?;
    lab.say(
        "SYN-ACK: the server acknowledges the client's SYN (ack 1: a SYN takes one sequence \
         number) and offers its own options. The client's ACK completes the handshake; \
         both ends are ESTABLISHED.",
    );
    let server_info = accepted.info()?;
    lab.say(&format!(
        "A SYN's window field is never scaled (65535 at most). From the next segment on, \
         each end shifts the other's field by the scale it offered: the client's ACK \
         advertises {} bytes; the server's buffer is {} bytes.",
        server_info.peer_window, server_info.read_buffer
    ));
    lab.say("Closing both ends (the close demo shows what those segments mean).");
    conn.close()?;
    std::thread::sleep(Duration::from_millis(50));
    accepted.close()?;
    drop(listener);
    lab.finish(&[
        "SYN, SYN-ACK, ACK: three segments, each SYN acknowledged with its sequence number + 1.",
        "MSS, window scale and SACK are offered in the SYNs and hold for the whole connection.",
        "A window field is 16 bits; with scaling a 1 MiB buffer is advertised (RFC 7323).",
    ])
}
