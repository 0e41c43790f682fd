//! `tapnet http`: a static file server speaking HTTP/1.1, written once against
//! [`stack::Conn`], so it runs on a tapnet stack or, with `--kernel`, on the kernel.
//!
//! Requests are parsed by `httparse` (RFC 9112 message syntax); this module is the glue:
//! reading a request head within limits (414 for a request line over 8 KiB, 431 for more
//! than 16 KiB or 100 header fields, 400 for anything malformed), choosing a response
//! (RFC 9110 semantics: GET and HEAD, 404, 405 with `Allow`), and keeping the connection
//! alive between requests (RFC 9112 section 9.3) until the client asks to close or stays
//! idle past `--idle-timeout`.
//!
//! With `--root DIR` it serves the files under DIR: a file by its extension's media
//! type, streamed in chunks; a directory by its `index.html` or a generated listing. A
//! request path is percent-decoded once and refused if any segment is `..` or it holds a
//! NUL or a backslash; what remains is resolved with `canonicalize` and must still lie
//! under the canonical root, so no symlink leads out either.
//!
//! Without `--root` it serves a built-in site that shows each connection as the server
//! sees it: both addresses and, on tapnet, the TCP state and windows
//! ([`stack::TcpInfo`]). The page loads `/app.js`, which fetches `/conn.json` and writes
//! it into the page, so a browser exercises a second request, often on the same
//! connection.

use std::any::Any;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Read};
use std::net::{Ipv4Addr, Shutdown, SocketAddr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, percent_encode};
use stack::{Conn, Network};

use crate::net::{self, App, Ctx, NetArgs};

/// The longest request line accepted (RFC 9112 section 3: a server that receives a
/// longer request-target answers 414).
const MAX_REQUEST_LINE: usize = 8 * 1024;
/// The most bytes of header fields accepted after the request line (RFC 6585 section 5:
/// 431 Request Header Fields Too Large).
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// The most header fields accepted (also 431).
const MAX_HEADERS: usize = 100;
/// How much of a file is read and written at a time.
const CHUNK: usize = 64 * 1024;
/// How long a closing connection waits for the client's remaining bytes (RFC 9112
/// section 9.6: close the write side first, then read on for a while, so the client is
/// not sent a reset that destroys the response before it has read it).
const LINGER: Duration = Duration::from_secs(2);

/// Options of `tapnet http`.
#[derive(Args, Debug)]
#[command(after_help = "\
Without --root, `/` is a page showing the connection as the server sees it (addresses and,
on tapnet, TCP state and windows); its script fetches /conn.json.

Example (as root; the TAP's kernel side is 10.0.0.1/24):
  tapnet http --root /srv/www &      # tapnet on tap0 as 10.0.0.2
  curl -v http://10.0.0.2/")]
pub struct Opts {
    /// The TCP port to listen on
    #[arg(long, default_value_t = 80)]
    pub port: u16,
    /// Serve the files under DIR (a directory shows its index.html, or a listing);
    /// without it, a built-in page shows each connection as the server sees it
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Close a connection that sends no complete request for this many seconds
    #[arg(long, value_name = "SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub idle_timeout: u64,
    #[command(flatten)]
    pub net: NetArgs,
}

/// Runs `tapnet http` until SIGINT or SIGTERM.
pub fn run(opts: Opts) -> io::Result<ExitCode> {
    let root = match &opts.root {
        None => None,
        Some(dir) => {
            let canon = fs::canonicalize(dir)
                .map_err(|e| io::Error::new(e.kind(), format!("--root {}: {e}", dir.display())))?;
            if !canon.is_dir() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("--root {}: not a directory", dir.display()),
                ));
            }
            Some(canon)
        }
    };
    let server = Server {
        port: opts.port,
        site: Arc::new(Site {
            root,
            idle: Duration::from_secs(opts.idle_timeout),
        }),
    };
    net::run(&opts.net, server)
}

/// The server: where it listens and what it serves.
struct Server {
    port: u16,
    site: Arc<Site>,
}

/// What every connection shares.
struct Site {
    /// The canonical root directory, or `None` for the built-in site.
    root: Option<PathBuf>,
    /// How long a connection may wait for its next request.
    idle: Duration,
}

impl App for Server {
    fn run<N: Network>(self, net: N, ctx: &Ctx, describe: &str) -> io::Result<ExitCode> {
        let listener = net.listen(SocketAddr::from((Ipv4Addr::UNSPECIFIED, self.port)))?;
        let what = match &self.site.root {
            Some(root) => root.display().to_string(),
            None => "the built-in connection page".into(),
        };
        say!("http: serving {what} on port {} ({describe})", self.port);
        let site = self.site;
        net::serve(listener, ctx, move |conn, peer| {
            serve_conn(conn, peer, &site)
        })?;
        Ok(ExitCode::SUCCESS)
    }
}

/// A parsed request head.
#[derive(Debug)]
struct Request {
    method: String,
    target: String,
    /// The minor version: HTTP/1.0 or HTTP/1.1.
    minor: u8,
    headers: Vec<(String, Vec<u8>)>,
}

impl Request {
    /// The value of the first field named `name` (case-insensitive, RFC 9110 5.1).
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// Whether the `Connection` field lists `token` (RFC 9110 section 7.6.1).
    fn connection_has(&self, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
            .flat_map(|(_, v)| v.split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    }

    /// Whether the connection stays open after the response (RFC 9112 section 9.3):
    /// HTTP/1.1 persists unless "close"; HTTP/1.0 only with "keep-alive".
    fn keep_alive(&self) -> bool {
        if self.minor >= 1 {
            !self.connection_has("close")
        } else {
            self.connection_has("keep-alive")
        }
    }

    /// Whether a body follows the head (RFC 9112 section 6.3). This server reads none.
    fn has_body(&self) -> bool {
        self.header("transfer-encoding").is_some()
            || self
                .header("content-length")
                .is_some_and(|v| v.trim_ascii() != b"0")
    }
}

/// What one response was, for the access log and for whether to go on.
struct Sent {
    status: u16,
    bytes: u64,
    keep_alive: bool,
}

/// Serves requests on one connection until it closes, errs, idles out, or a response
/// says close; then closes it gracefully.
fn serve_conn<C: Conn + 'static>(mut conn: C, peer: SocketAddr, site: &Site) {
    let mut buf = Vec::new();
    loop {
        let _ = conn.set_read_deadline(Some(Instant::now() + site.idle));
        let req = match read_request(&mut conn, &mut buf) {
            Ok(Some(req)) => req,
            Ok(None) => break,
            Err(status) => {
                let sent = send_error(&mut conn, site, status, false, false, &[]);
                say!("http: {peer} (bad request) -> {status}");
                if let Err(e) = sent {
                    log::debug!("{e}");
                }
                break;
            }
        };
        match respond(&mut conn, &req, site) {
            Ok(sent) => {
                say!(
                    "http: {peer} {} {} -> {} ({} bytes)",
                    req.method,
                    req.target,
                    sent.status,
                    sent.bytes
                );
                if !sent.keep_alive {
                    break;
                }
            }
            Err(e) => {
                log::info!("http: {peer} {} {}: {e}", req.method, req.target);
                break;
            }
        }
    }
    linger_close(conn);
}

/// Closes the write side, reads on briefly so the client's unread bytes do not turn into
/// a reset, then closes (RFC 9112 section 9.6).
fn linger_close<C: Conn>(mut conn: C) {
    let _ = conn.shutdown(Shutdown::Write);
    let _ = conn.set_read_deadline(Some(Instant::now() + LINGER));
    let mut sink = [0u8; 4096];
    let mut drained = 0usize;
    while drained < 1 << 20 {
        match conn.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    let _ = conn.close();
}

/// Reads one request head, keeping any bytes after it in `buf` for the next request.
/// `Ok(None)`: the client closed or went idle between requests. `Err(status)`: the
/// request is refused with that status, after which the connection closes.
fn read_request<R: Read>(conn: &mut R, buf: &mut Vec<u8>) -> Result<Option<Request>, u16> {
    let mut chunk = [0u8; 4096];
    loop {
        // RFC 9112 section 2.2: ignore at least one empty line before a request-line.
        let blank = buf
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        buf.drain(..blank);
        if !buf.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut parsed = httparse::Request::new(&mut headers);
            match parsed.parse(buf) {
                Ok(httparse::Status::Complete(n)) => {
                    check_limits(&buf[..n])?;
                    let req = Request {
                        method: parsed.method.unwrap_or_default().to_string(),
                        target: parsed.path.unwrap_or_default().to_string(),
                        minor: parsed.version.unwrap_or(1),
                        headers: parsed
                            .headers
                            .iter()
                            .map(|h| (h.name.to_string(), h.value.to_vec()))
                            .collect(),
                    };
                    buf.drain(..n);
                    return Ok(Some(req));
                }
                Ok(httparse::Status::Partial) => check_limits(buf)?,
                Err(httparse::Error::TooManyHeaders) => return Err(431),
                Err(e) => {
                    log::debug!("http: malformed request: {e}");
                    return Err(400);
                }
            }
        }
        match conn.read(&mut chunk) {
            Ok(0) => return Ok(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // Idle between requests: close quietly. In the middle of one: 408.
            Err(e) if e.kind() == io::ErrorKind::TimedOut && !buf.is_empty() => return Err(408),
            Err(e) => {
                log::debug!("http: {e}");
                return Ok(None);
            }
        }
    }
}

/// Refuses a head (complete or not) whose request line or header section is too long.
fn check_limits(head: &[u8]) -> Result<(), u16> {
    match head.iter().position(|&b| b == b'\n') {
        None if head.len() > MAX_REQUEST_LINE => Err(414),
        None => Ok(()),
        Some(end) if end > MAX_REQUEST_LINE => Err(414),
        Some(end) if head.len() - end - 1 > MAX_HEADER_BYTES => Err(431),
        Some(_) => Ok(()),
    }
}

/// Answers one parsed request.
fn respond<C: Conn + 'static>(conn: &mut C, req: &Request, site: &Site) -> io::Result<Sent> {
    // This server reads no request bodies, so after one it cannot find the next request:
    // it answers and closes (RFC 9112 section 9.6).
    let keep = req.keep_alive() && !req.has_body();
    // RFC 9112 section 3.2: a request without Host (HTTP/1.1) gets 400.
    if req.minor >= 1 && req.header("host").is_none() {
        return send_error(conn, site, 400, false, keep, &[]);
    }
    let head_only = match req.method.as_str() {
        "GET" => false,
        "HEAD" => true,
        // RFC 9110 section 15.5.6: 405 carries Allow.
        _ => return send_error(conn, site, 405, false, keep, &[("Allow", "GET, HEAD")]),
    };
    let target = match Target::parse(&req.target) {
        Ok(target) => target,
        Err(status) => return send_error(conn, site, status, head_only, keep, &[]),
    };
    match &site.root {
        Some(root) => serve_path(conn, site, root, &target, head_only, keep),
        None => serve_builtin(conn, site, &target, head_only, keep),
    }
}

/// A request-target reduced to what a file server needs.
#[derive(Debug, PartialEq)]
struct Target {
    /// The path as sent (still percent-encoded), without query or fragment.
    raw: String,
    /// The decoded path segments, without empty and `.` segments.
    segments: Vec<Vec<u8>>,
}

impl Target {
    /// Parses an origin-form or absolute-form target (RFC 9112 section 3.2) and decodes
    /// its path; a `..` segment (encoded or not), a NUL or a backslash is refused with
    /// 400.
    fn parse(target: &str) -> Result<Target, u16> {
        let path = match target.split_once("://") {
            // Absolute-form: drop scheme and authority.
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => {
                rest.find('/').map_or("/", |i| &rest[i..])
            }
            Some(_) => return Err(400),
            None => target,
        };
        if !path.starts_with('/') {
            return Err(400);
        }
        let raw = path.split(['?', '#']).next().unwrap_or("/").to_string();
        let decoded: Vec<u8> = percent_decode_str(&raw).collect();
        if decoded.iter().any(|&b| b == 0 || b == b'\\') {
            return Err(400);
        }
        let mut segments = Vec::new();
        for seg in decoded.split(|&b| b == b'/') {
            match seg {
                b"" | b"." => {}
                b".." => return Err(400),
                _ => segments.push(seg.to_vec()),
            }
        }
        Ok(Target { raw, segments })
    }
}

/// Serves a file or directory under `root`.
fn serve_path<C: Conn>(
    conn: &mut C,
    site: &Site,
    root: &Path,
    target: &Target,
    head_only: bool,
    keep: bool,
) -> io::Result<Sent> {
    let mut path = root.to_path_buf();
    for seg in &target.segments {
        path.push(OsStr::from_bytes(seg));
    }
    let status_of = |e: &io::Error| match e.kind() {
        io::ErrorKind::PermissionDenied => 403,
        _ => 404,
    };
    let canon = match fs::canonicalize(&path) {
        Ok(canon) => canon,
        Err(e) => return send_error(conn, site, status_of(&e), head_only, keep, &[]),
    };
    if !canon.starts_with(root) {
        log::warn!(
            "http: {} leads out of the root, to {}",
            target.raw,
            canon.display()
        );
        return send_error(conn, site, 403, head_only, keep, &[]);
    }
    let meta = match fs::metadata(&canon) {
        Ok(meta) => meta,
        Err(e) => return send_error(conn, site, status_of(&e), head_only, keep, &[]),
    };
    if meta.is_dir() {
        // Relative links in a listing or index.html need the trailing slash.
        if !target.raw.ends_with('/') {
            let location = format!("{}/", target.raw);
            return send_error(
                conn,
                site,
                301,
                head_only,
                keep,
                &[("Location", location.as_str())],
            );
        }
        let index = canon.join("index.html");
        if index.is_file() {
            return send_file(conn, site, &index, head_only, keep);
        }
        let page = listing(&canon, target)?;
        return send_body(
            conn,
            site,
            200,
            "text/html; charset=utf-8",
            page.as_bytes(),
            head_only,
            keep,
            &[],
        );
    }
    if !meta.is_file() {
        // A FIFO or a device: opening it could block or never end.
        return send_error(conn, site, 403, head_only, keep, &[]);
    }
    send_file(conn, site, &canon, head_only, keep)
}

/// Streams a regular file with its length and media type.
fn send_file<C: Conn>(
    conn: &mut C,
    site: &Site,
    path: &Path,
    head_only: bool,
    keep: bool,
) -> io::Result<Sent> {
    let file = File::open(path).and_then(|f| f.metadata().map(|m| (f, m.len())));
    let (file, len) = match file {
        Ok(opened) => opened,
        Err(e) => {
            let status = if e.kind() == io::ErrorKind::PermissionDenied {
                403
            } else {
                404
            };
            return send_error(conn, site, status, head_only, keep, &[]);
        }
    };
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let ctype = match mime.type_() {
        mime_guess::mime::TEXT => format!("{mime}; charset=utf-8"),
        _ => mime.to_string(),
    };
    write_head(conn, site, 200, &ctype, len, keep, &[])?;
    if head_only {
        return Ok(Sent {
            status: 200,
            bytes: 0,
            keep_alive: keep,
        });
    }
    let mut file = file.take(len);
    let mut chunk = vec![0u8; CHUNK];
    let mut sent = 0u64;
    loop {
        let n = match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("reading {}: {e}", path.display()),
                ));
            }
        };
        write_timed(conn, site, &chunk[..n])?;
        sent += n as u64;
    }
    // A file that shrank while being sent leaves the body short of its Content-Length:
    // only closing tells the client (RFC 9112 section 6.3).
    Ok(Sent {
        status: 200,
        bytes: sent,
        keep_alive: keep && sent == len,
    })
}

/// The characters escaped in a link to a file name: everything not safe in a path
/// segment.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'\'')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'\\')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// An HTML listing of a directory, with a link per entry.
fn listing(dir: &Path, target: &Target) -> io::Result<String> {
    let mut entries: Vec<(Vec<u8>, bool)> = fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| {
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            (e.file_name().as_bytes().to_vec(), is_dir)
        })
        .collect();
    entries.sort();
    let title = html_escape(&String::from_utf8_lossy(
        &percent_decode_str(&target.raw).collect::<Vec<u8>>(),
    ));
    let mut page = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Index of {title}</title></head>\n\
         <body><h1>Index of {title}</h1>\n<ul>\n"
    );
    if !target.segments.is_empty() {
        page.push_str("<li><a href=\"../\">../</a></li>\n");
    }
    for (name, is_dir) in entries {
        let slash = if is_dir { "/" } else { "" };
        let _ = writeln!(
            page,
            "<li><a href=\"{}{slash}\">{}{slash}</a></li>",
            percent_encode(&name, SEGMENT),
            html_escape(&String::from_utf8_lossy(&name)),
        );
    }
    page.push_str("</ul></body></html>\n");
    Ok(page)
}

/// Escapes text for HTML content and attribute values.
fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// The built-in site: the connection page, its script, and the connection as JSON.
fn serve_builtin<C: Conn + 'static>(
    conn: &mut C,
    site: &Site,
    target: &Target,
    head_only: bool,
    keep: bool,
) -> io::Result<Sent> {
    let view = View::of(conn);
    let (ctype, body) = match target.raw.as_str() {
        "/" | "/index.html" => ("text/html; charset=utf-8", view.page()),
        "/app.js" => ("text/javascript; charset=utf-8", APP_JS.to_string()),
        "/conn.json" => ("application/json", view.json()),
        _ => return send_error(conn, site, 404, head_only, keep, &[]),
    };
    send_body(
        conn,
        site,
        200,
        ctype,
        body.as_bytes(),
        head_only,
        keep,
        &[("Cache-Control", "no-store")],
    )
}

/// The script the built-in page loads: it fetches `/conn.json` and shows it.
const APP_JS: &str = r#"// tapnet http: fetch this connection's view as JSON and show it in the page.
fetch('/conn.json', { cache: 'no-store' })
  .then((r) => r.json())
  .then((v) => {
    const lines = ['conn.json says: network ' + v.network, 'local ' + v.local, 'peer ' + v.peer];
    if (v.tcp) {
      for (const [k, x] of Object.entries(v.tcp)) lines.push(k + ' ' + x);
    }
    document.getElementById('live').textContent = lines.join('\n');
  })
  .catch((e) => {
    document.getElementById('live').textContent = 'fetching /conn.json failed: ' + e;
  });
"#;

/// One connection as the server sees it.
struct View {
    network: &'static str,
    local: String,
    peer: String,
    /// The TCP details (name, value), on tapnet.
    tcp: Option<Vec<(&'static str, String)>>,
}

impl View {
    /// Looks at `conn`: on tapnet it is a [`stack::TcpStream`] with [`stack::TcpInfo`];
    /// on the kernel only the addresses are known here.
    fn of<C: Conn + 'static>(conn: &C) -> View {
        let addr = |a: io::Result<SocketAddr>| a.map_or_else(|e| e.to_string(), |a| a.to_string());
        let any: &dyn Any = conn;
        let (network, tcp) = if let Some(stream) = any.downcast_ref::<stack::TcpStream>() {
            let tcp = stream.info().ok().map(|i| {
                let ms = |d: Option<Duration>| {
                    d.map_or("-".into(), |d| format!("{:.3} ms", d.as_secs_f64() * 1e3))
                };
                vec![
                    ("state", i.state.to_string()),
                    (
                        "time_in_state",
                        format!("{:.3} s", i.time_in_state.as_secs_f64()),
                    ),
                    ("recv_window", i.recv_window.to_string()),
                    ("peer_window", i.peer_window.to_string()),
                    ("send_queue", i.send_queue.to_string()),
                    ("recv_queue", i.recv_queue.to_string()),
                    ("rtt", ms(i.rtt)),
                    ("rto", ms(i.rto)),
                    ("retransmits", i.retransmits.to_string()),
                    ("fast_retransmits", i.fast_retransmits.to_string()),
                    ("segments_in", i.segments_in.to_string()),
                    ("segments_out", i.segments_out.to_string()),
                ]
            });
            ("tapnet", tcp)
        } else if any.is::<stack::kernel::TcpStream>() {
            ("kernel socket", None)
        } else {
            ("unknown", None)
        };
        View {
            network,
            local: addr(conn.local_addr()),
            peer: addr(conn.peer_addr()),
            tcp,
        }
    }

    /// The connection page.
    fn page(&self) -> String {
        let mut rows = String::new();
        let mut row = |k: &str, v: &str| {
            let _ = writeln!(
                rows,
                "<tr><th>{}</th><td>{}</td></tr>",
                html_escape(k),
                html_escape(v)
            );
        };
        row("network", self.network);
        row("server (local)", &self.local);
        row("you (peer)", &self.peer);
        match &self.tcp {
            Some(tcp) => tcp.iter().for_each(|(k, v)| row(k, v)),
            None => row("TCP state", "not shown: the kernel keeps it"),
        }
        format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>tapnet: this connection</title></head>\n\
             <body><h1>This connection, as tapnet sees it</h1>\n\
             <p>The server's end of the TCP connection that carried this page:</p>\n\
             <table>\n{rows}</table>\n\
             <h2>Fetched by JavaScript</h2>\n<pre id=\"live\">waiting for /conn.json</pre>\n\
             <script src=\"/app.js\"></script>\n</body></html>\n"
        )
    }

    /// The connection as a JSON object.
    fn json(&self) -> String {
        let tcp = match &self.tcp {
            None => "null".to_string(),
            Some(tcp) => {
                let fields: Vec<String> = tcp
                    .iter()
                    .map(|(k, v)| format!("{}:{}", json_string(k), json_string(v)))
                    .collect();
                format!("{{{}}}", fields.join(","))
            }
        };
        format!(
            "{{\"network\":{},\"local\":{},\"peer\":{},\"tcp\":{tcp}}}\n",
            json_string(self.network),
            json_string(&self.local),
            json_string(&self.peer)
        )
    }
}

/// A JSON string literal (RFC 8259 section 7).
fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Sends a small error (or redirect) page for `status`.
fn send_error<C: Conn>(
    conn: &mut C,
    site: &Site,
    status: u16,
    head_only: bool,
    keep: bool,
    extra: &[(&str, &str)],
) -> io::Result<Sent> {
    let reason = reason(status);
    let body = format!(
        "<!DOCTYPE html>\n<html><head><title>{status} {reason}</title></head>\
         <body><h1>{status} {reason}</h1></body></html>\n"
    );
    // After a refused head the request's end is unknown: close (RFC 9112 section 9.6).
    let keep = keep && !matches!(status, 400 | 408 | 414 | 431);
    send_body(
        conn,
        site,
        status,
        "text/html; charset=utf-8",
        body.as_bytes(),
        head_only,
        keep,
        extra,
    )
}

/// Sends a complete response held in memory.
#[allow(clippy::too_many_arguments)]
fn send_body<C: Conn>(
    conn: &mut C,
    site: &Site,
    status: u16,
    ctype: &str,
    body: &[u8],
    head_only: bool,
    keep: bool,
    extra: &[(&str, &str)],
) -> io::Result<Sent> {
    write_head(conn, site, status, ctype, body.len() as u64, keep, extra)?;
    let bytes = if head_only {
        0
    } else {
        write_timed(conn, site, body)?;
        body.len() as u64
    };
    Ok(Sent {
        status,
        bytes,
        keep_alive: keep,
    })
}

/// Writes a response head (RFC 9112 section 4 and 6). Content-Length is always sent,
/// for HEAD the length GET would have (RFC 9110 section 9.3.2).
fn write_head<C: Conn>(
    conn: &mut C,
    site: &Site,
    status: u16,
    ctype: &str,
    len: u64,
    keep: bool,
    extra: &[(&str, &str)],
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nDate: {}\r\nServer: tapnet/{}\r\nContent-Type: {ctype}\r\nContent-Length: {len}\r\n",
        reason(status),
        http_date(SystemTime::now()),
        env!("CARGO_PKG_VERSION"),
    );
    for (name, value) in extra {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    head.push_str(if keep {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    write_timed(conn, site, head.as_bytes())
}

/// Writes all of `data`, failing if the client takes no bytes for the idle timeout.
fn write_timed<C: Conn>(conn: &mut C, site: &Site, data: &[u8]) -> io::Result<()> {
    conn.set_write_deadline(Some(Instant::now() + site.idle))?;
    conn.write_all(data)
}

/// The reason phrase for a status this server sends (RFC 9110 section 15).
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        301 => "Moved Permanently",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    }
}

/// An IMF-fixdate (RFC 9110 section 5.6.7): `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // Days since 1970-01-01 to a civil date (Howard Hinnant's civil_from_days).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_date_is_the_imf_fixdate() {
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(http_date(leap), "Tue, 29 Feb 2000 00:00:00 GMT");
    }

    #[test]
    fn targets_are_decoded_and_traversal_refused() {
        let t = Target::parse("/a/b%20c/./d?x=1").unwrap();
        assert_eq!(t.raw, "/a/b%20c/./d");
        assert_eq!(
            t.segments,
            vec![b"a".to_vec(), b"b c".to_vec(), b"d".to_vec()]
        );
        let t = Target::parse("http://10.0.0.2/x").unwrap();
        assert_eq!(t.segments, vec![b"x".to_vec()]);
        for bad in [
            "/../etc/passwd",
            "/a/../../b",
            "/%2e%2e/x",
            "/..%2fx",
            "/%2E%2E%2Fx",
            "/a%00b",
            "/a%5c..%5cb",
            "/a\\b",
            "x",
            "*",
            "ftp://h/x",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn limits_give_414_and_431() {
        let long_line = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_REQUEST_LINE));
        assert_eq!(check_limits(long_line.as_bytes()), Err(414));
        assert_eq!(
            check_limits(&long_line.as_bytes()[..MAX_REQUEST_LINE + 1]),
            Err(414)
        );
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEADER_BYTES));
        assert_eq!(check_limits(big.as_bytes()), Err(431));
        assert_eq!(check_limits(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Ok(()));
    }

    #[test]
    fn requests_are_read_across_reads_and_pipelined() {
        let mut wire: &[u8] = b"\r\nGET /a HTTP/1.1\r\nHost: h\r\n\r\nHEAD /b HTTP/1.0\r\n\r\n";
        let mut buf = Vec::new();
        let a = read_request(&mut wire, &mut buf).unwrap().unwrap();
        assert_eq!(
            (a.method.as_str(), a.target.as_str(), a.minor),
            ("GET", "/a", 1)
        );
        assert!(a.keep_alive());
        let b = read_request(&mut wire, &mut buf).unwrap().unwrap();
        assert_eq!((b.method.as_str(), b.minor), ("HEAD", 0));
        assert!(!b.keep_alive());
        assert!(read_request(&mut wire, &mut buf).unwrap().is_none());
        let mut bad: &[u8] = b"GET / HTTP/1.1\r\nBad Header\r\n\r\n";
        assert_eq!(read_request(&mut bad, &mut Vec::new()).unwrap_err(), 400);
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
