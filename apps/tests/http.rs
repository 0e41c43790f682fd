//! `tapnet http` and `tapnet get` against real peers: curl, raw kernel sockets and
//! headless Chromium as clients of the server on tapnet; Python's `http.server` as the
//! server for `get`. Everything runs inside the test's own network namespace.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{App, TAPNET};
use tapnet_tests::{
    Failed, KERNEL_ADDR, STACK_ADDR, TempDir, TestResult, check, eventually, in_netns, plain, root,
    run,
};

fn main() {
    tapnet_tests::main(vec![
        root("http_get_head_404_listing_and_index_with_curl", get_head),
        root("http_refuses_path_traversal", traversal),
        root("http_serves_a_10_mib_file_byte_exact", big_file),
        root("http_keeps_alive_and_honours_close", keep_alive),
        root("http_serves_100_concurrent_clients", concurrent),
        root("http_answers_405_400_414_and_431", refusals),
        root("http_builtin_page_renders_in_headless_chromium", browser),
        root("http_on_the_kernel_serves_the_same", on_kernel),
        root("get_downloads_from_python_byte_exact", get_python),
        root(
            "get_with_kernel_fetches_from_tapnet_http",
            get_kernel_from_tapnet,
        ),
        plain("get_refuses_https_before_any_traffic", get_https),
    ])
}

/// The server's address on the TAP.
fn server() -> SocketAddr {
    SocketAddr::from((STACK_ADDR, 80))
}

/// A site: a text file, a subdirectory without index, one with index.html, a 10 MiB
/// random file; and beside the root (outside it) a secret file.
struct Site {
    dir: TempDir,
    big: Vec<u8>,
}

impl Site {
    fn new() -> Result<Site, Failed> {
        let dir = TempDir::new("http")?;
        let www = dir.join("www");
        std::fs::create_dir_all(www.join("sub"))?;
        std::fs::create_dir_all(www.join("site"))?;
        std::fs::write(www.join("hello.txt"), "hello, tapnet\n")?;
        std::fs::write(www.join("sub/a page.html"), "<p>a</p>")?;
        std::fs::write(www.join("site/index.html"), "<h1>the index</h1>")?;
        std::fs::write(dir.join("secret.txt"), "SECRET-7f3a")?;
        std::os::unix::fs::symlink(dir.join("secret.txt"), www.join("leak.txt"))?;
        let mut rng = fastrand::Rng::with_seed(4);
        let big: Vec<u8> = (0..10 << 20).map(|_| rng.u8(..)).collect();
        std::fs::write(www.join("big.bin"), &big)?;
        Ok(Site { dir, big })
    }

    fn root(&self) -> String {
        self.dir.join("www").display().to_string()
    }

    /// `tapnet http --root` on the TAP, listening.
    fn serve(&self) -> Result<App, Failed> {
        let app = App::on_tap(&["http", "--port", "80", "--root", &self.root()])?;
        app.wait_listening(server())?;
        Ok(app)
    }
}

/// Runs curl; returns (exit code, stdout, stderr).
fn curl(args: &[&str]) -> Result<(i32, Vec<u8>, String), Failed> {
    let out = run(
        Command::new("curl").args(["--max-time", "60"]).args(args),
        Duration::from_secs(90),
    )?;
    Ok((
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `curl -sS -D - URL`: the head and body together, as text.
fn curl_text(args: &[&str]) -> Result<String, Failed> {
    let (code, out, err) = curl(&[&["-sS", "-D", "-"], args].concat())?;
    check!(code == 0, "curl {args:?} exit {code}: {err}");
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Sends `request` on a fresh kernel connection and reads until the server closes.
fn exchange(request: &[u8]) -> Result<String, Failed> {
    let mut s = TcpStream::connect_timeout(&server(), Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.set_write_timeout(Some(Duration::from_secs(20)))?;
    // The server may answer and close before taking all of an oversized request.
    let _ = s.write_all(request);
    let mut got = Vec::new();
    s.read_to_end(&mut got)
        .map_err(|e| format!("reading the answer to {:?}: {e}", preview(request)))?;
    Ok(String::from_utf8_lossy(&got).into_owned())
}

fn preview(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(60)]).into_owned()
}

fn get_head() -> TestResult {
    let site = Site::new()?;
    in_netns(|| {
        let app = site.serve()?;
        let got = curl_text(&["http://10.0.0.2/hello.txt"])?;
        check!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
        for want in [
            "Content-Length: 14\r\n",
            "Content-Type: text/plain; charset=utf-8\r\n",
            "\r\n\r\nhello, tapnet\n",
        ] {
            check!(got.contains(want), "GET lacks {want:?}:\n{got}");
        }
        check!(got.ends_with("hello, tapnet\n"), "{got}");

        let head = curl_text(&["-I", "http://10.0.0.2/hello.txt"])?;
        check!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        check!(head.contains("Content-Length: 14\r\n"), "{head}");
        check!(head.ends_with("\r\n\r\n"), "HEAD has a body:\n{head}");

        let missing = curl_text(&["http://10.0.0.2/nope.txt"])?;
        check!(
            missing.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{missing}"
        );

        let list = curl_text(&["http://10.0.0.2/sub/"])?;
        check!(list.starts_with("HTTP/1.1 200 OK\r\n"), "{list}");
        check!(list.contains("Content-Type: text/html"), "{list}");
        check!(
            list.contains("<a href=\"a%20page.html\">a page.html</a>"),
            "listing lacks the link:\n{list}"
        );
        let moved = curl_text(&["http://10.0.0.2/sub"])?;
        check!(moved.starts_with("HTTP/1.1 301 "), "{moved}");
        check!(moved.contains("Location: /sub/\r\n"), "{moved}");
        let (code, page, err) = curl(&["-sS", "http://10.0.0.2/sub/a%20page.html"])?;
        check!(
            code == 0 && page == b"<p>a</p>",
            "exit {code} {err}: {page:?}"
        );

        let index = curl_text(&["http://10.0.0.2/site/"])?;
        check!(index.ends_with("<h1>the index</h1>"), "{index}");

        let (_, log, _) = app.stop()?;
        check!(log.contains("GET /hello.txt -> 200"), "access log:\n{log}");
        Ok(())
    })
}

fn traversal() -> TestResult {
    let site = Site::new()?;
    in_netns(|| {
        let _app = site.serve()?;
        for path in [
            "/../../etc/passwd",
            "/../secret.txt",
            "/%2e%2e/secret.txt",
            "/%2E%2E/%2e%2e/etc/passwd",
            "/..%2fsecret.txt",
            "/sub/..%2f..%2fsecret.txt",
            "/sub/../../secret.txt",
            "/..%5csecret.txt",
            "/leak.txt",
        ] {
            let url = format!("http://10.0.0.2{path}");
            let (code, out, err) = curl(&["-sS", "--path-as-is", "-D", "-", &url])?;
            let out = String::from_utf8_lossy(&out);
            check!(code == 0, "curl {url}: exit {code}: {err}");
            check!(
                !out.starts_with("HTTP/1.1 200"),
                "{path} was served:\n{out}"
            );
            check!(
                out.starts_with("HTTP/1.1 400") || out.starts_with("HTTP/1.1 403"),
                "{path}: expected 400 or 403:\n{out}"
            );
            check!(
                !out.contains("SECRET-7f3a") && !out.contains("root:"),
                "{path} leaked:\n{out}"
            );
        }
        Ok(())
    })
}

fn big_file() -> TestResult {
    let site = Site::new()?;
    in_netns(|| {
        let _app = site.serve()?;
        let out = site.dir.join("fetched.bin");
        let out_s = out.display().to_string();
        let (code, _, err) = curl(&["-sS", "-o", &out_s, "http://10.0.0.2/big.bin"])?;
        check!(code == 0, "curl exit {code}: {err}");
        let got = std::fs::read(&out)?;
        check!(
            got.len() == site.big.len(),
            "{} bytes of {}",
            got.len(),
            site.big.len()
        );
        check!(got == site.big, "the 10 MiB file arrived changed");
        Ok(())
    })
}

fn keep_alive() -> TestResult {
    let site = Site::new()?;
    in_netns(|| {
        let _app = site.serve()?;
        // Two URLs, one curl: the second must reuse the first connection.
        let (code, out, err) = curl(&[
            "-sS",
            "-v",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-w",
            "%{num_connects}\n",
            "http://10.0.0.2/hello.txt",
            "http://10.0.0.2/sub/",
        ])?;
        let out = String::from_utf8_lossy(&out);
        check!(code == 0, "curl exit {code}: {err}");
        check!(out == "1\n0\n", "connects per URL {out:?}, verbose:\n{err}");
        check!(err.contains("Re-using existing"), "{err}");

        // Two pipelined requests on one raw connection, the second asking to close:
        // both are answered and then the server closes (read_to_end returns).
        let both = exchange(
            b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n\
              GET /hello.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )?;
        check!(both.matches("hello, tapnet\n").count() == 2, "{both}");
        check!(
            both.matches("Connection: keep-alive\r\n").count() == 1,
            "{both}"
        );
        check!(
            both.ends_with("Connection: close\r\n\r\nhello, tapnet\n"),
            "{both}"
        );

        // HTTP/1.0 without keep-alive closes after one response.
        let old = exchange(b"GET /hello.txt HTTP/1.0\r\n\r\n")?;
        check!(old.starts_with("HTTP/1.1 200 OK\r\n"), "{old}");
        check!(old.contains("Connection: close\r\n"), "{old}");
        Ok(())
    })
}

fn concurrent() -> TestResult {
    let site = Site::new()?;
    in_netns(|| {
        let _app = site.serve()?;
        let barrier = std::sync::Barrier::new(100);
        let results: Vec<Result<String, String>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..100)
                .map(|i| {
                    let barrier = &barrier;
                    scope.spawn(move || -> Result<String, String> {
                        let mut s = TcpStream::connect_timeout(&server(), Duration::from_secs(20))
                            .map_err(|e| format!("client {i}: connect: {e}"))?;
                        s.set_read_timeout(Some(Duration::from_secs(30)))
                            .map_err(|e| e.to_string())?;
                        barrier.wait();
                        s.write_all(
                            b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                        )
                        .map_err(|e| format!("client {i}: write: {e}"))?;
                        let mut got = Vec::new();
                        s.read_to_end(&mut got)
                            .map_err(|e| format!("client {i}: read: {e}"))?;
                        Ok(String::from_utf8_lossy(&got).into_owned())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err("client panicked".into())))
                .collect()
        });
        for (i, r) in results.into_iter().enumerate() {
            let got = r?;
            check!(
                got.starts_with("HTTP/1.1 200 OK\r\n") && got.ends_with("\r\n\r\nhello, tapnet\n"),
                "client {i} got:\n{got}"
            );
        }
        Ok(())
    })
}

fn refusals() -> TestResult {
    let site = Site::new()?;
    in_netns(|| {
        let _app = site.serve()?;
        let post =
            exchange(b"POST /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc")?;
        check!(
            post.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{post}"
        );
        check!(post.contains("Allow: GET, HEAD\r\n"), "{post}");
        let (_, out, _) = curl(&[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "DELETE",
            "http://10.0.0.2/hello.txt",
        ])?;
        check!(out == b"405", "DELETE: {}", String::from_utf8_lossy(&out));

        let long = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(9000));
        let got = exchange(long.as_bytes())?;
        check!(
            got.starts_with("HTTP/1.1 414 URI Too Long\r\n"),
            "{}",
            preview(got.as_bytes())
        );

        let big_field = format!(
            "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
            "b".repeat(17000)
        );
        let got = exchange(big_field.as_bytes())?;
        check!(
            got.starts_with("HTTP/1.1 431 "),
            "one big field: {}",
            preview(got.as_bytes())
        );
        let many: String = (0..150).map(|i| format!("X-{i}: v\r\n")).collect();
        let got = exchange(format!("GET / HTTP/1.1\r\nHost: t\r\n{many}\r\n").as_bytes())?;
        check!(
            got.starts_with("HTTP/1.1 431 "),
            "150 fields: {}",
            preview(got.as_bytes())
        );

        for bad in [
            &b"GET / HTTP/1.1\r\nBad Field\r\n\r\n"[..],
            b"GET /hello.txt HTTP/1.1\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        ] {
            let got = exchange(bad)?;
            check!(
                got.starts_with("HTTP/1.1 400 Bad Request\r\n"),
                "{:?}: {got}",
                preview(bad)
            );
        }
        // The server is still serving after all that.
        check!(curl_text(&["http://10.0.0.2/hello.txt"])?.ends_with("hello, tapnet\n"));
        Ok(())
    })
}

fn browser() -> TestResult {
    let chromium = "/usr/bin/chromium";
    eventually(Duration::from_secs(600), "chromium to be installed", || {
        std::path::Path::new(chromium).exists()
    })?;
    let profile = TempDir::new("chromium")?;
    in_netns(|| {
        let _app = App::on_tap(&["http", "--port", "80"])?;
        _app.wait_listening(server())?;
        let json = curl_text(&["http://10.0.0.2/conn.json"])?;
        check!(json.contains("\"network\":\"tapnet\""), "{json}");
        check!(json.contains("\"state\":\"ESTABLISHED\""), "{json}");
        check!(json.contains("\"local\":\"10.0.0.2:80\""), "{json}");

        let out = run(
            Command::new(chromium)
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-dev-shm-usage",
                ])
                .arg(format!("--user-data-dir={}", profile.0.display()))
                .args([
                    "--virtual-time-budget=5000",
                    "--dump-dom",
                    "http://10.0.0.2/",
                ])
                .env("HOME", &profile.0),
            Duration::from_secs(120),
        )?;
        let dom = String::from_utf8_lossy(&out.stdout);
        let err = String::from_utf8_lossy(&out.stderr);
        check!(
            dom.contains("This connection, as tapnet sees it"),
            "page content missing; DOM:\n{dom}\nstderr:\n{err}"
        );
        // Only the script writes this: the fetched /conn.json made it into the DOM.
        check!(
            dom.contains("conn.json says: network tapnet"),
            "the JavaScript-fetched resource is missing; DOM:\n{dom}\nstderr:\n{err}"
        );
        check!(dom.contains("state ESTABLISHED"), "{dom}");
        check!(dom.contains("local 10.0.0.2:80"), "{dom}");
        check!(dom.contains("peer 10.0.0.1:"), "{dom}");
        Ok(())
    })
}

fn on_kernel() -> TestResult {
    let site = Site::new()?;
    in_netns(|| {
        tapnet_tests::ip(&["link", "set", "lo", "up"])?;
        let files = App::spawn(&["http", "--kernel", "--port", "8080", "--root", &site.root()])?;
        files.wait_listening("127.0.0.1:8080".parse()?)?;
        let got = curl_text(&["http://127.0.0.1:8080/hello.txt"])?;
        check!(
            got.starts_with("HTTP/1.1 200 OK\r\n") && got.ends_with("hello, tapnet\n"),
            "{got}"
        );
        let page = App::spawn(&["http", "--kernel", "--port", "8081"])?;
        page.wait_listening("127.0.0.1:8081".parse()?)?;
        let json = curl_text(&["http://127.0.0.1:8081/conn.json"])?;
        check!(json.contains("\"network\":\"kernel socket\""), "{json}");
        check!(json.contains("\"local\":\"127.0.0.1:8081\""), "{json}");
        Ok(())
    })
}

/// Python's http.server, killed when dropped.
struct Python(Child);

impl Python {
    /// Serves `dir` on `bind`:8000 and waits until it listens.
    fn serve(dir: &std::path::Path, bind: &str) -> Result<Python, Failed> {
        let child = Command::new("python3")
            .args(["-m", "http.server", "8000", "--bind", bind, "--directory"])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let python = Python(child);
        let addr: SocketAddr = format!("{bind}:8000").parse()?;
        eventually(
            Duration::from_secs(20),
            "python's http.server to listen",
            || TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok(),
        )?;
        Ok(python)
    }
}

impl Drop for Python {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `tapnet ARGS`; returns (exit code, stdout, stderr). Output goes through files:
/// `tapnet_tests::run` collects pipes only after the exit, so a body larger than a pipe
/// buffer would stall the child.
fn tapnet(args: &[&str]) -> Result<(i32, Vec<u8>, String), Failed> {
    let dir = TempDir::new("get-out")?;
    let child = Command::new(TAPNET)
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("stdout"))?)
        .stderr(std::fs::File::create(dir.join("stderr"))?)
        .spawn()?;
    let status = tapnet_tests::wait_bounded(child, Duration::from_secs(120))
        .map_err(|e| format!("tapnet {args:?}: {e}"))?
        .status;
    Ok((
        status.code().unwrap_or(-1),
        std::fs::read(dir.join("stdout"))?,
        std::fs::read_to_string(dir.join("stderr"))?,
    ))
}

fn get_python() -> TestResult {
    let dir = TempDir::new("get")?;
    let mut rng = fastrand::Rng::with_seed(5);
    let data: Vec<u8> = (0..5 << 20).map(|_| rng.u8(..)).collect();
    std::fs::create_dir_all(dir.join("www"))?;
    std::fs::write(dir.join("www/file.bin"), &data)?;
    in_netns(|| {
        common::tap_up()?;
        let _python = Python::serve(&dir.join("www"), &KERNEL_ADDR.to_string())?;
        let dev = ["--tap", "tap0", "--addr", "10.0.0.2/24"];
        let url = "http://10.0.0.1:8000/file.bin";

        let out = dir.join("out.bin").display().to_string();
        let (code, _, err) = tapnet(&[&["get", url, "-o", &out], &dev[..]].concat())?;
        check!(code == 0, "get -o: exit {code}: {err}");
        check!(
            err.contains(" 200 OK\n"),
            "status line not on stderr:\n{err}"
        );
        check!(
            err.contains("Content-Length: 5242880\n"),
            "headers not on stderr:\n{err}"
        );
        check!(
            std::fs::read(&out)? == data,
            "-o FILE differs from the served file"
        );

        let (code, body, err) = tapnet(&[&["get", url], &dev[..]].concat())?;
        check!(code == 0, "get to stdout: exit {code}: {err}");
        check!(
            body.len() == data.len(),
            "{} bytes on stdout of {}",
            body.len(),
            data.len()
        );
        check!(body == data, "stdout differs from the served file");

        let (code, _, err) =
            tapnet(&[&["get", "http://10.0.0.1:8000/missing"], &dev[..]].concat())?;
        check!(code == 1, "a 404 exits {code}: {err}");
        check!(err.contains("404"), "{err}");

        let (code, _, err) = tapnet(
            &[
                &["get", "http://10.0.0.1:8001/", "--timeout", "5"],
                &dev[..],
            ]
            .concat(),
        )?;
        check!(code == 1, "a refused connection exits {code}: {err}");
        check!(
            err.contains("10.0.0.1:8001"),
            "the error names the peer: {err}"
        );
        Ok(())
    })
}

fn get_kernel_from_tapnet() -> TestResult {
    let site = Site::new()?;
    in_netns(|| {
        let _app = site.serve()?;
        let (code, body, err) = tapnet(&["get", "--kernel", "http://10.0.0.2/big.bin"])?;
        check!(code == 0, "exit {code}: {err}");
        check!(err.starts_with("HTTP/1.1 200 OK\n"), "{err}");
        check!(
            body == site.big,
            "{} bytes, differing from the file",
            body.len()
        );
        Ok(())
    })
}

fn get_https() -> TestResult {
    // A TAP that does not exist: had get tried to open it, the error would say so.
    let (code, body, err) = tapnet(&["get", "https://10.0.0.1/", "--tap", "tapnet-none9"])?;
    check!(code == 1, "exit {code}: {err}");
    check!(body.is_empty());
    check!(err.contains("https is not supported"), "{err}");
    check!(
        !err.contains("TAP") && !err.contains("tapnet-none9"),
        "it touched the device: {err}"
    );
    let (code, _, err) = tapnet(&["get", "http://example.com/", "--tap", "tapnet-none9"])?;
    check!(
        code == 1 && err.contains("not an IP address"),
        "exit {code}: {err}"
    );
    Ok(())
}
