//! `tapnet get`: an HTTP/1.1 client, written once against [`stack::Conn`], so it fetches
//! over a tapnet stack or, with `--kernel`, over the kernel's sockets.
//!
//! It sends one `GET` with `Host` and `Connection: close` (RFC 9112 section 9.6), parses
//! the response head with `httparse`, prints the status line and header fields to
//! stderr, and copies the body to stdout or `-o FILE`. The body's end is found as RFC
//! 9112 section 6.3 orders it: no body for 1xx, 204 and 304; chunked transfer coding
//! (section 7.1) when it is the final coding; else `Content-Length`; else the close of
//! the connection.
//!
//! Only `http://` URLs whose host is an IP address (or `localhost`) are taken: tapnet
//! has no TLS and no DNS. The URL is checked before any device is opened, so a refused
//! URL sends nothing.

use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use stack::{Conn, Network};

use crate::net::{self, App, Ctx, NetArgs};

/// The largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// The most header fields accepted in a response.
const MAX_HEADERS: usize = 100;
/// Bodies at least this large (or of unknown length) get a progress bar on a terminal.
const PROGRESS_FROM: u64 = 1 << 20;

/// Options of `tapnet get`.
#[derive(Args, Debug)]
#[command(after_help = "\
The status line and header fields go to stderr, the body to stdout (or FILE). The exit
status is 0 for a response below 400, 1 for a status of 400 or more (the body is still
written), for a connection failure, or a malformed or cut-short response. Redirects are
not followed.

Example (as root; tap0 exists and its kernel side is 10.0.0.1/24):
  python3 -m http.server --bind 10.0.0.1 8000 &
  tapnet get http://10.0.0.1:8000/ -o index.html --tap tap0 --addr 10.0.0.2/24")]
pub struct Opts {
    /// What to fetch: http://ADDRESS[:PORT][/PATH], the host an IP address or localhost
    /// (tapnet has no DNS, and no TLS: https is refused)
    #[arg(value_name = "URL")]
    pub url: String,
    /// Write the body to FILE instead of stdout
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Give up when connecting, or when the server sends nothing, for this many seconds
    #[arg(long, value_name = "SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub timeout: u64,
    #[command(flatten)]
    pub net: NetArgs,
}

/// Runs `tapnet get`.
pub fn run(opts: Opts) -> io::Result<ExitCode> {
    let url = Url::parse(&opts.url)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{}: {e}", opts.url)))?;
    let client = Client {
        url,
        text: opts.url.clone(),
        output: opts.output,
        timeout: Duration::from_secs(opts.timeout),
    };
    net::run(&opts.net, client)
}

/// An `http` URL reduced to what one request needs (RFC 9110 section 4.2.1).
#[derive(Debug, PartialEq)]
struct Url {
    /// Where to connect.
    addr: SocketAddr,
    /// The authority, for the `Host` field.
    host: String,
    /// The request-target in origin form: path and query.
    target: String,
}

impl Url {
    /// Parses `http://HOST[:PORT][/PATH][?QUERY][#FRAGMENT]` with HOST an IPv4 address,
    /// a bracketed IPv6 address, or `localhost`.
    fn parse(s: &str) -> Result<Url, String> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or("not a URL: expected http://ADDRESS[:PORT]/PATH")?;
        if scheme.eq_ignore_ascii_case("https") {
            return Err("https is not supported: tapnet get speaks plain HTTP only \
                        (no TLS); use an http:// URL"
                .into());
        }
        if !scheme.eq_ignore_ascii_case("http") {
            return Err(format!(
                "the scheme {scheme:?} is not supported: use http://"
            ));
        }
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if authority.contains('@') {
            return Err("user information in the URL is not supported".into());
        }
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (host, after) = v6.split_once(']').ok_or("unclosed [ in the address")?;
                match after {
                    "" => (host, ""),
                    _ => (host, after.strip_prefix(':').ok_or("junk after ]")?),
                }
            }
            None => authority.split_once(':').unwrap_or((authority, "")),
        };
        let port = match port {
            "" => 80,
            p => p.parse::<u16>().map_err(|_| format!("bad port {p:?}"))?,
        };
        let ip = if host.eq_ignore_ascii_case("localhost") {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else if host.is_empty() {
            return Err("no host in the URL".into());
        } else {
            host.parse::<IpAddr>().map_err(|_| {
                format!(
                    "{host:?} is not an IP address: tapnet has no DNS, give the server's address"
                )
            })?
        };
        let tail = tail.split('#').next().unwrap_or("");
        let target = match tail {
            "" => "/".to_string(),
            t if t.starts_with('?') => format!("/{t}"),
            t => t.to_string(),
        };
        // RFC 9112 section 3.2: the target is sent as it is; it may not hold spaces or
        // control characters, which would break the request line.
        if target.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err("spaces and control characters must be percent-encoded".into());
        }
        Ok(Url {
            addr: SocketAddr::new(ip, port),
            host: authority.to_string(),
            target,
        })
    }
}

/// The client: one request, one response.
struct Client {
    url: Url,
    /// The URL as given, for messages.
    text: String,
    output: Option<PathBuf>,
    timeout: Duration,
}

/// A connection whose every read must make progress within `timeout`.
struct Idle<C> {
    conn: C,
    timeout: Duration,
}

impl<C: Conn> Read for Idle<C> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.conn
            .set_read_deadline(Some(Instant::now() + self.timeout))?;
        self.conn.read(buf)
    }
}

/// A response head.
struct Head {
    minor: u8,
    code: u16,
    reason: String,
    headers: Vec<(String, Vec<u8>)>,
}

impl Head {
    /// The values of every field named `name`.
    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

/// How the body's end is found (RFC 9112 section 6.3).
#[derive(Debug, PartialEq)]
enum Framing {
    None,
    Chunked,
    Length(u64),
    UntilClose,
}

impl App for Client {
    fn run<N: Network>(self, net: N, ctx: &Ctx, describe: &str) -> io::Result<ExitCode> {
        log::info!("get: {} over {describe}", self.text);
        let conn = net.dial_timeout(self.url.addr, self.timeout)?;
        let closer = conn.try_clone()?;
        ctx.on_stop(move || {
            let _ = closer.close();
        });
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: tapnet-get/{}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
            self.url.target,
            self.url.host,
            env!("CARGO_PKG_VERSION")
        );
        conn.set_write_deadline(Some(Instant::now() + self.timeout))?;
        let mut conn = Idle {
            conn,
            timeout: self.timeout,
        };
        conn.conn.write_all(request.as_bytes())?;
        let (head, rest) = read_head(&mut conn)?;
        eprintln!("HTTP/1.{} {} {}", head.minor, head.code, head.reason);
        for (name, value) in &head.headers {
            eprintln!("{name}: {}", String::from_utf8_lossy(value));
        }
        let framing = framing(&head)?;
        let mut out: Box<dyn Write> = match &self.output {
            None => Box::new(io::BufWriter::new(io::stdout().lock())),
            Some(path) => Box::new(io::BufWriter::new(File::create(path).map_err(|e| {
                io::Error::new(e.kind(), format!("creating {}: {e}", path.display()))
            })?)),
        };
        let dest = match &self.output {
            None => "stdout".to_string(),
            Some(path) => path.display().to_string(),
        };
        let bar = progress(&framing);
        let src = io::Cursor::new(rest).chain(conn);
        let copied = match framing {
            Framing::None => Ok(0),
            Framing::Length(len) => copy(&mut src.take(len), &mut out, &dest, &bar).and_then(|n| {
                if n < len {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the connection closed after {n} of {len} body bytes"),
                    ))
                } else {
                    Ok(n)
                }
            }),
            Framing::Chunked => copy(
                &mut Chunked::new(BufReader::new(src)),
                &mut out,
                &dest,
                &bar,
            ),
            Framing::UntilClose => copy(&mut { src }, &mut out, &dest, &bar),
        };
        if let Some(bar) = &bar {
            bar.finish_and_clear();
        }
        let n = copied?;
        out.flush()
            .map_err(|e| io::Error::new(e.kind(), format!("writing {dest}: {e}")))?;
        log::info!("get: {n} body bytes to {dest}");
        if head.code >= 400 {
            eprintln!(
                "tapnet: {}: the server answered {} {}",
                self.text, head.code, head.reason
            );
            return Ok(ExitCode::FAILURE);
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// A progress bar on stderr, if stderr is a terminal and the body is large or of unknown
/// length.
fn progress(framing: &Framing) -> Option<ProgressBar> {
    if !io::stderr().is_terminal() {
        return None;
    }
    match framing {
        Framing::None => None,
        Framing::Length(len) if *len < PROGRESS_FROM => None,
        Framing::Length(len) => {
            let bar = ProgressBar::new(*len);
            if let Ok(style) = ProgressStyle::with_template(
                "{bytes}/{total_bytes} [{wide_bar}] {bytes_per_sec} eta {eta}",
            ) {
                bar.set_style(style);
            }
            Some(bar)
        }
        Framing::Chunked | Framing::UntilClose => {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} {bytes} {bytes_per_sec}") {
                bar.set_style(style);
            }
            Some(bar)
        }
    }
}

/// Copies `src` to `out` until its end, advancing the bar.
fn copy(
    src: &mut dyn Read,
    out: &mut dyn Write,
    dest: &str,
    bar: &Option<ProgressBar>,
) -> io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        out.write_all(&buf[..n])
            .map_err(|e| io::Error::new(e.kind(), format!("writing {dest}: {e}")))?;
        total += n as u64;
        if let Some(bar) = bar {
            bar.inc(n as u64);
        }
    }
}

/// Reads the response head, skipping interim 1xx responses; returns it with the bytes
/// read after it.
fn read_head<R: Read>(conn: &mut R) -> io::Result<(Head, Vec<u8>)> {
    let bad = |msg: String| io::Error::new(io::ErrorKind::InvalidData, msg);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if !buf.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut parsed = httparse::Response::new(&mut headers);
            match parsed.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let head = Head {
                        minor: parsed.version.unwrap_or(1),
                        code: parsed.code.unwrap_or(0),
                        reason: parsed.reason.unwrap_or("").to_string(),
                        headers: parsed
                            .headers
                            .iter()
                            .map(|h| (h.name.to_string(), h.value.to_vec()))
                            .collect(),
                    };
                    buf.drain(..n);
                    // RFC 9110 section 15.2: interim responses precede the final one.
                    if (100..200).contains(&head.code) && head.code != 101 {
                        continue;
                    }
                    return Ok((head, buf));
                }
                Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                    return Err(bad(format!("the response head is over {MAX_HEAD} bytes")));
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => return Err(bad(format!("malformed response head: {e}"))),
            }
        }
        match conn.read(&mut chunk) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "the connection closed before a complete response head ({} bytes)",
                        buf.len()
                    ),
                ));
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Decides how the body ends (RFC 9112 section 6.3).
fn framing(head: &Head) -> io::Result<Framing> {
    let bad = |msg: String| io::Error::new(io::ErrorKind::InvalidData, msg);
    if (100..200).contains(&head.code) || head.code == 204 || head.code == 304 {
        return Ok(Framing::None);
    }
    let codings: Vec<String> = head
        .all("transfer-encoding")
        .flat_map(|v| v.split(|&b| b == b','))
        .map(|c| String::from_utf8_lossy(c.trim_ascii()).to_ascii_lowercase())
        .filter(|c| !c.is_empty())
        .collect();
    if let Some(last) = codings.last() {
        // Section 6.3 (3): chunked last means chunked; any other final coding means the
        // body runs until the close.
        return Ok(if last == "chunked" {
            Framing::Chunked
        } else {
            Framing::UntilClose
        });
    }
    let mut length = None;
    for value in head.all("content-length") {
        // Section 6.3 (5): a list of identical values is one value; differing ones are
        // an error.
        for part in value.split(|&b| b == b',') {
            let text = String::from_utf8_lossy(part.trim_ascii()).into_owned();
            let n = (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
                .then(|| text.parse::<u64>().ok())
                .flatten()
                .ok_or_else(|| bad(format!("bad Content-Length {text:?}")))?;
            if length.is_some_and(|l| l != n) {
                return Err(bad("conflicting Content-Length values".into()));
            }
            length = Some(n);
        }
    }
    Ok(length.map_or(Framing::UntilClose, Framing::Length))
}

/// A reader of a chunked body (RFC 9112 section 7.1): yields the chunks' data and ends
/// after the last chunk and the trailer section.
struct Chunked<R> {
    src: R,
    /// Bytes left in the current chunk.
    left: u64,
    /// Whether a chunk's data has ended and its CRLF is still to be read.
    crlf_due: bool,
    done: bool,
}

impl<R: BufRead> Chunked<R> {
    fn new(src: R) -> Chunked<R> {
        Chunked {
            src,
            left: 0,
            crlf_due: false,
            done: false,
        }
    }

    /// One line, without its CRLF, of at most 4 KiB.
    fn line(&mut self) -> io::Result<Vec<u8>> {
        let mut line = Vec::new();
        (&mut self.src).take(4096).read_until(b'\n', &mut line)?;
        if !line.ends_with(b"\n") {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the chunked body ended early or has an overlong line",
            ));
        }
        line.pop();
        if line.ends_with(b"\r") {
            line.pop();
        }
        Ok(line)
    }
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let bad = |msg: String| io::Error::new(io::ErrorKind::InvalidData, msg);
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            if self.crlf_due {
                if !self.line()?.is_empty() {
                    return Err(bad("chunk data is longer than its size".into()));
                }
                self.crlf_due = false;
            }
            // chunk-size [ chunk-ext ] CRLF
            let line = self.line()?;
            let size = line
                .split(|&b| b == b';')
                .next()
                .unwrap_or(b"")
                .trim_ascii();
            if size.is_empty() || size.len() > 15 || !size.iter().all(u8::is_ascii_hexdigit) {
                return Err(bad(format!(
                    "bad chunk size line {:?}",
                    String::from_utf8_lossy(&line)
                )));
            }
            let size = u64::from_str_radix(&String::from_utf8_lossy(size), 16)
                .map_err(|e| bad(format!("bad chunk size: {e}")))?;
            if size == 0 {
                // The trailer section, up to its empty line, is read and dropped.
                while !self.line()?.is_empty() {}
                self.done = true;
                return Ok(0);
            }
            self.left = size;
        }
        let max = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.src.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection closed inside a chunk",
            ));
        }
        self.left -= n as u64;
        self.crlf_due = self.left == 0;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed() {
        let u = Url::parse("http://10.0.0.1:8000/a/b?c=d#frag").unwrap();
        assert_eq!(u.addr, "10.0.0.1:8000".parse().unwrap());
        assert_eq!(u.host, "10.0.0.1:8000");
        assert_eq!(u.target, "/a/b?c=d");
        let u = Url::parse("http://localhost").unwrap();
        assert_eq!(
            (u.addr, u.target.as_str()),
            ("127.0.0.1:80".parse().unwrap(), "/")
        );
        let u = Url::parse("HTTP://[::1]:81?x").unwrap();
        assert_eq!(
            (u.addr, u.target.as_str()),
            ("[::1]:81".parse().unwrap(), "/?x")
        );
        for (bad, says) in [
            ("https://10.0.0.1/", "https is not supported"),
            ("ftp://10.0.0.1/", "not supported"),
            ("10.0.0.1/x", "not a URL"),
            ("http://example.com/", "not an IP address"),
            ("http://10.0.0.1:99999/", "bad port"),
            ("http://u@10.0.0.1/", "user information"),
            ("http:///x", "no host"),
            ("http://10.0.0.1/a b", "percent-encoded"),
        ] {
            let err = Url::parse(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn chunked_bodies_are_decoded() {
        let wire =
            b"4;ext=1\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-T: 1\r\n\r\n";
        let mut body = String::new();
        Chunked::new(&wire[..]).read_to_string(&mut body).unwrap();
        assert_eq!(body, "Wikipedia in\r\n\r\nchunks.");
        for bad in [
            &b"zz\r\n"[..],
            b"4\r\nWikiX\r\n0\r\n\r\n",
            b"4\r\nWi",
            b"FFFFFFFFFFFFFFFFF\r\n",
        ] {
            assert!(Chunked::new(bad).read_to_end(&mut Vec::new()).is_err());
        }
    }

    #[test]
    fn framing_follows_rfc_9112_section_6_3() {
        let head = |code, h: &[(&str, &str)]| Head {
            minor: 1,
            code,
            reason: String::new(),
            headers: h
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect(),
        };
        let f = |code, h| framing(&head(code, h)).ok();
        assert_eq!(f(204, &[("Content-Length", "5")]), Some(Framing::None));
        assert_eq!(f(200, &[("Content-Length", "5")]), Some(Framing::Length(5)));
        assert_eq!(
            f(200, &[("Content-Length", "5, 5")]),
            Some(Framing::Length(5))
        );
        assert_eq!(
            f(200, &[("Content-Length", "5"), ("Content-Length", "6")]),
            None
        );
        assert_eq!(f(200, &[("Content-Length", "-1")]), None);
        let chunked = [
            ("Transfer-Encoding", "gzip, chunked"),
            ("Content-Length", "5"),
        ];
        assert_eq!(f(200, &chunked), Some(Framing::Chunked));
        assert_eq!(f(200, &[]), Some(Framing::UntilClose));
    }
}
