//! A tiny HTTP/1.1 server on 127.0.0.1 serving a dl.k8s.io-shaped mirror, with
//! faults injected per path: each request for a path takes the next queued
//! fault (then the path is served normally), or the path's sticky fault.
//! Every connection serves one request (`Connection: close`). Loopback only.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status (and headers), empty body.
    Status(u16, Vec<(&'static str, String)>),
    /// Headers with the full length, `n` body bytes, a pause, then a TCP reset.
    Reset(usize),
    /// Headers with the full length, `n` body bytes, then a clean close.
    Truncate(usize),
    /// No Content-Length (close-delimited body), `n` bytes, then close.
    TruncateUnsized(usize),
    /// Headers, `n` body bytes, then silence for the duration, then close.
    Stall(usize, Duration),
    /// 302 to this path on the same server, or to this absolute URL.
    Redirect(String),
    /// Serve the whole file with 200 even when a range was asked for.
    IgnoreRange,
    /// Wait before answering normally (to make downloads overlap).
    Delay(Duration),
}

#[derive(Debug, Clone)]
pub struct Request {
    pub path: String,
    pub range: Option<String>,
    /// Every header line as received, without the line end.
    pub headers: Vec<String>,
}

#[derive(Default)]
struct State {
    files: HashMap<String, Vec<u8>>,
    queued: HashMap<String, VecDeque<Fault>>,
    sticky: HashMap<String, Fault>,
    log: Vec<Request>,
}

#[derive(Clone)]
pub struct Mirror {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Mirror {
    pub fn start() -> Mirror {
        Mirror::start_at("127.0.0.1:0")
    }

    /// A mirror on `addr`, e.g. a port the test reserved earlier and left
    /// closed until now (a server that is down at first).
    pub fn start_at(addr: &str) -> Mirror {
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let addr = listen(addr, move |conn| {
            let _ = serve(conn, &st);
        });
        Mirror { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serve `bytes` at `path` (no leading slash), e.g. `v1.10.2/kubernetes-server-linux-amd64.tar.gz`.
    pub fn put(&self, path: &str, bytes: Vec<u8>) {
        self.state.lock().unwrap().files.insert(path.into(), bytes);
    }

    pub fn fault(&self, path: &str, fault: Fault) {
        self.state
            .lock()
            .unwrap()
            .queued
            .entry(path.into())
            .or_default()
            .push_back(fault);
    }

    pub fn sticky(&self, path: &str, fault: Fault) {
        self.state.lock().unwrap().sticky.insert(path.into(), fault);
    }

    pub fn log(&self) -> Vec<Request> {
        self.state.lock().unwrap().log.clone()
    }

    /// Requests for `path`.
    pub fn requests(&self, path: &str) -> Vec<Request> {
        self.log().into_iter().filter(|r| r.path == path).collect()
    }
}

/// Accept connections on a fresh port of 127.0.0.1, each handled on a thread
/// of its own, for as long as the test runs.
fn listen(addr: &str, handle: impl Fn(TcpStream) + Send + Sync + 'static) -> SocketAddr {
    let listener = TcpListener::bind(addr).unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = Arc::new(handle);
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let handle = handle.clone();
            thread::spawn(move || handle(conn));
        }
    });
    addr
}

fn serve(conn: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut range = None;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        headers.push(h.trim_end().to_string());
        if let Some((k, v)) = h.split_once(':')
            && k.trim().eq_ignore_ascii_case("range")
        {
            range = Some(v.trim().to_string());
        }
    }
    let path = target.trim_start_matches('/').to_string();
    let (body, fault) = {
        let mut st = state.lock().unwrap();
        st.log.push(Request {
            path: path.clone(),
            range: range.clone(),
            headers,
        });
        let fault = st
            .queued
            .get_mut(&path)
            .and_then(|q| q.pop_front())
            .or_else(|| st.sticky.get(&path).cloned());
        (st.files.get(&path).cloned(), fault)
    };
    let mut out = conn;
    let mut ignore_range = false;
    match &fault {
        Some(Fault::Status(code, headers)) => {
            let mut resp =
                format!("HTTP/1.1 {code} Fault\r\nContent-Length: 0\r\nConnection: close\r\n");
            for (k, v) in headers {
                resp.push_str(&format!("{k}: {v}\r\n"));
            }
            resp.push_str("\r\n");
            return out.write_all(resp.as_bytes());
        }
        Some(Fault::Redirect(to)) => {
            let to = if to.contains("://") {
                to.clone()
            } else {
                format!("/{to}")
            };
            let resp = format!(
                "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            return out.write_all(resp.as_bytes());
        }
        Some(Fault::IgnoreRange) => ignore_range = true,
        Some(Fault::Delay(d)) => thread::sleep(*d),
        _ => {}
    }
    let Some(body) = body else {
        return out.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    };
    let len = body.len();
    let start = range
        .as_deref()
        .filter(|_| !ignore_range)
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|s| s.parse::<usize>().ok());
    let etag = format!(
        "\"{:x}\"",
        len * 31 + body.first().copied().unwrap_or(0) as usize
    );
    let (head, slice) = match start {
        Some(s) if s < len => (
            format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {s}-{}/{len}\r\nETag: {etag}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n",
                len - s,
                len - 1
            ),
            &body[s..],
        ),
        Some(_) => {
            return out.write_all(format!(
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            ).as_bytes());
        }
        None if matches!(fault, Some(Fault::TruncateUnsized(_))) => (
            "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_string(),
            &body[..],
        ),
        None => (
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nETag: {etag}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n"
            ),
            &body[..],
        ),
    };
    out.write_all(head.as_bytes())?;
    match fault {
        Some(Fault::Reset(n)) => {
            out.write_all(&slice[..n.min(slice.len())])?;
            out.flush()?;
            thread::sleep(Duration::from_millis(300));
            reset(&out);
            Ok(())
        }
        Some(Fault::Truncate(n)) | Some(Fault::TruncateUnsized(n)) => {
            out.write_all(&slice[..n.min(slice.len())])?;
            out.flush()?;
            out.shutdown(std::net::Shutdown::Both)
        }
        Some(Fault::Stall(n, d)) => {
            out.write_all(&slice[..n.min(slice.len())])?;
            out.flush()?;
            thread::sleep(d);
            Ok(())
        }
        _ => {
            for chunk in slice.chunks(64 * 1024) {
                out.write_all(chunk)?;
            }
            Ok(())
        }
    }
}

/// Close with a TCP reset (SO_LINGER 0), not a clean FIN.
fn reset(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    // Dropping the last handle closes the socket; the caller's handle is dropped
    // right after this returns, and the reader's clone is dropped with `serve`.
}

/// A fake HTTPS proxy: records the CONNECT line of each connection and answers
/// 502, so nothing is ever forwarded anywhere.
pub struct FakeProxy {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<String>>>,
}

impl FakeProxy {
    pub fn start() -> FakeProxy {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let addr = listen("127.0.0.1:0", move |conn| {
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            s.lock().unwrap().push(line.trim().to_string());
            let mut out = conn;
            let _ = out.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
        });
        FakeProxy { addr, seen }
    }
}

/// HTTPS on 127.0.0.1 in front of a plain mirror, with a certificate for
/// 127.0.0.1 from a CA made for the test (`ca_pem`).
pub struct TlsFront {
    pub addr: SocketAddr,
    pub ca_pem: String,
}

impl TlsFront {
    pub fn start(backend: SocketAddr) -> TlsFront {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "imgbuild test mirror CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let mut leaf_params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        leaf_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
        let config = Arc::new(
            rustls::ServerConfig::builder()
                .with_no_client_auth()
                .with_single_cert(vec![leaf.der().clone()], key)
                .unwrap(),
        );
        let addr = listen("127.0.0.1:0", move |tcp| {
            let _ = forward(&config, tcp, backend);
        });
        TlsFront {
            addr,
            ca_pem: ca_cert.pem(),
        }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }
}

/// One request over TLS: pass its head on to `backend`, copy the answer back.
fn forward(
    config: &Arc<rustls::ServerConfig>,
    tcp: TcpStream,
    backend: SocketAddr,
) -> std::io::Result<()> {
    use std::io::Read;
    let conn = rustls::ServerConnection::new(config.clone()).map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tls.read_exact(&mut byte)?;
        head.push(byte[0]);
    }
    let mut back = TcpStream::connect(backend)?;
    back.write_all(&head)?;
    std::io::copy(&mut back, &mut tls)?;
    tls.conn.send_close_notify();
    tls.flush()
}
