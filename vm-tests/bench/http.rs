//! A small static HTTP/1.1 server on 127.0.0.1 for guests (they reach it as 10.0.2.2 through
//! QEMU's user-mode network): it serves the OSTree repository and images. GET and HEAD only,
//! one thread per connection, keep-alive (libcurl reuses connections while pulling objects).
//! It stops when dropped.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

pub struct HttpServer {
    port: u16,
    stop: Arc<AtomicBool>,
}

/// The address guests use to reach the host under QEMU's user-mode network.
pub const GUEST_HOST_ADDR: &str = "10.0.2.2";

impl HttpServer {
    pub fn serve(root: &Path) -> Result<HttpServer> {
        let listener =
            TcpListener::bind("127.0.0.1:0").context("binding the HTTP server on 127.0.0.1")?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let root = root.to_path_buf();
        let stop2 = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    let root = root.clone();
                    std::thread::spawn(move || {
                        let _ = handle(conn, &root);
                    });
                }
            }
        });
        Ok(HttpServer { port, stop })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of `path` (relative to the served dir) as a guest sees it.
    pub fn guest_url(&self, path: &str) -> String {
        format!(
            "http://{GUEST_HOST_ADDR}:{}/{}",
            self.port,
            path.trim_start_matches('/')
        )
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Debian's busybox httpd on 127.0.0.1, for what a mirror does that [`HttpServer`] does not:
/// Range requests (`x2nestos --live URL` reads the ISO in place). Stopped when dropped.
pub struct Mirror {
    child: std::process::Child,
    port: u16,
}

impl Mirror {
    pub fn serve(root: &Path) -> Result<Mirror> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut cmd = std::process::Command::new("busybox");
        cmd.args(["httpd", "-f", "-p", &format!("127.0.0.1:{port}"), "-h"])
            .arg(root);
        let child = cmd.spawn().map_err(|e| super::cmd::spawn_error(&cmd, e))?;
        let mirror = Mirror { child, port };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "busybox httpd did not listen on 127.0.0.1:{port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(mirror)
    }

    /// The URL of `path` (relative to the served dir) as a guest sees it.
    pub fn guest_url(&self, path: &str) -> String {
        format!(
            "http://{GUEST_HOST_ADDR}:{}/{}",
            self.port,
            path.trim_start_matches('/')
        )
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Maps a request path onto the served dir; `..` and absolute components are refused.
fn resolve(root: &Path, target: &str) -> Option<PathBuf> {
    let path = target.split(['?', '#']).next().unwrap_or("");
    let mut out = root.to_path_buf();
    for c in Path::new(path.trim_start_matches('/')).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out)
}

fn handle(conn: TcpStream, root: &Path) -> Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    loop {
        let mut request = String::new();
        if reader.read_line(&mut request)? == 0 {
            return Ok(());
        }
        let mut close = false;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if lower.starts_with("connection:") && lower.contains("close") {
                close = true;
            }
        }
        let mut parts = request.split_whitespace();
        let method = parts.next().unwrap_or("");
        let target = parts.next().unwrap_or("/");
        if parts.next() == Some("HTTP/1.0") {
            close = true;
        }
        let file = resolve(root, target).filter(|p| p.is_file());
        match (method, file) {
            ("GET" | "HEAD", Some(p)) => {
                let mut f = File::open(&p)?;
                let len = f.metadata()?.len();
                write!(
                    out,
                    "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\n{}\r\n",
                    if close { "Connection: close\r\n" } else { "" }
                )?;
                if method == "GET" {
                    std::io::copy(&mut f, &mut out)?;
                }
            }
            ("GET" | "HEAD", None) => {
                write!(out, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?;
            }
            _ => {
                write!(
                    out,
                    "HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )?;
                return Ok(());
            }
        }
        out.flush()?;
        if close {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn refuses_paths_outside_the_root() {
        let root = Path::new("/srv/x");
        assert_eq!(resolve(root, "/a/b?c"), Some(PathBuf::from("/srv/x/a/b")));
        assert_eq!(resolve(root, "/../etc/passwd"), None);
    }

    #[test]
    fn serves_a_file_and_404s() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hello"), b"hi there").unwrap();
        let server = HttpServer::serve(dir.path()).unwrap();
        let get = |path: &str| {
            let mut s = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut r = String::new();
            s.read_to_string(&mut r).unwrap();
            r
        };
        let ok = get("/hello");
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.ends_with("hi there"));
        assert!(get("/missing").starts_with("HTTP/1.1 404"));
    }
}
