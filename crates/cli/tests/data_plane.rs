//! The data plane end to end: real `agentbox serve`, real containers, servers inside the sandbox
//! (`python3 -m http.server` and a small stdlib WebSocket echo server), reached through the proxy
//! on `--proxy-listen` in every routing form.

mod common;

use std::net::TcpStream;
use std::time::Duration;

use common::{Opts, Server};
use tokio_tungstenite::tungstenite;
use tungstenite::client::IntoClientRequest;

/// A WebSocket echo server in python3's stdlib (the host image has no `websockets` module): the
/// RFC 6455 handshake, then every text/binary frame is answered with `echo: ` + its payload,
/// pings with pongs, and a close with a close. Unfragmented frames only; enough for the tests.
const WS_ECHO: &str = r#"
import base64, hashlib, socketserver, struct, sys
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
class H(socketserver.StreamRequestHandler):
    def send(self, op, data):
        n = len(data)
        if n < 126:
            hdr = struct.pack(">BB", 128 | op, n)
        elif n < 65536:
            hdr = struct.pack(">BBH", 128 | op, 126, n)
        else:
            hdr = struct.pack(">BBQ", 128 | op, 127, n)
        self.wfile.write(hdr + data)
    def handle(self):
        key = None
        while True:
            line = self.rfile.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-key":
                key = value.strip()
        if key is None:
            self.wfile.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            return
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        self.wfile.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                return
            op, n = head[0] & 15, head[1] & 127
            if n == 126:
                n = struct.unpack(">H", self.rfile.read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4) if head[1] & 128 else bytes(4)
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(n)))
            if op == 8:
                self.wfile.write(b"\x88\x00")
                return
            if op == 9:
                self.send(10, data)
            elif op in (1, 2):
                self.send(op, b"echo: " + data)
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer.daemon_threads = True
socketserver.ThreadingTCPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
"#;

const HELLO: &str = "hello from inside the sandbox";

/// One WebSocket round trip through the proxy at `proxy` (host:port); `Err` while the server is not up.
fn ws_echo(proxy: &str, req: tungstenite::handshake::client::Request, msg: &str) -> Result<String, String> {
    let tcp = TcpStream::connect(proxy).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (mut ws, resp) = tungstenite::client::client(req, tcp).map_err(|e| e.to_string())?;
    if resp.status() != 101 {
        return Err(format!("status {}", resp.status()));
    }
    ws.send(tungstenite::Message::text(msg)).map_err(|e| e.to_string())?;
    let answer = ws.read().map_err(|e| e.to_string())?.into_text().map_err(|e| e.to_string())?.to_string();
    let _ = ws.close(None);
    Ok(answer)
}

#[test]
fn data_plane_reaches_http_and_websocket_servers_inside_a_sandbox() {
    if common::skip_unless_root("data_plane_reaches_http_and_websocket_servers_inside_a_sandbox") {
        return;
    }
    let srv = Server::start(Opts::new(26).default_pool(1));
    let proxy_url = srv.proxy_url().expect("the server prints `agentbox data plane on URL`");
    let proxy = proxy_url.strip_prefix("http://").unwrap().to_string();
    srv.wait_pool_idle("default", 1);
    let id = srv.claim(&common::claim_body("default"))["sandboxId"].as_str().unwrap().to_string();

    srv.sh_ok(
        &id,
        &format!(
            "cd /tmp && printf '{HELLO}' > hello.txt && \
             python3 -c \"import binascii; open('/tmp/ws.py','wb').write(binascii.unhexlify('{}'))\" && \
             (nohup python3 -m http.server 8000 >/dev/null 2>&1 &) && (nohup python3 /tmp/ws.py 8765 >/tmp/ws.log 2>&1 &)",
            hex::encode(WS_ECHO)
        ),
    );
    let http = reqwest::blocking::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().unwrap();

    // Path form (prefix stripped, query kept); 502 until the server inside is up.
    let body = srv.wait_for("http.server through the path form", Duration::from_secs(20), || {
        let r = http.get(format!("{proxy_url}/sandboxes/{id}/8000/hello.txt?x=1")).send().ok()?;
        (r.status() == 200).then(|| r.text().unwrap())
    });
    assert_eq!(body, HELLO);

    // Header forms: the path is forwarded unchanged.
    for (hid, hport) in [("E2b-Sandbox-Id", "E2b-Sandbox-Port"), ("X-Sandbox-Id", "X-Sandbox-Port")] {
        let r = http.get(format!("{proxy_url}/hello.txt")).header(hid, &id).header(hport, "8000").send().unwrap();
        assert_eq!(r.status(), 200, "{hid}");
        assert_eq!(r.text().unwrap(), HELLO, "{hid}");
    }

    // A port nobody listens on, and an unknown sandbox.
    let r = http.get(format!("{proxy_url}/sandboxes/{id}/8001/")).send().unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.text().unwrap().contains("port 8001"));
    let r = http.get(format!("{proxy_url}/sandboxes/00000000-0000-7000-8000-000000000000/8000/")).send().unwrap();
    assert_eq!(r.status(), 404);

    // WebSocket through the three routing forms.
    let path_req = || format!("ws://{proxy}/sandboxes/{id}/8765/").into_client_request().unwrap();
    let answer = srv.wait_for("the WebSocket server through the path form", Duration::from_secs(20), || {
        ws_echo(&proxy, path_req(), "via path").ok()
    });
    assert_eq!(answer, "echo: via path");
    let mut header_req = format!("ws://{proxy}/").into_client_request().unwrap();
    header_req.headers_mut().insert("E2b-Sandbox-Id", id.parse().unwrap());
    header_req.headers_mut().insert("E2b-Sandbox-Port", "8765".parse().unwrap());
    assert_eq!(ws_echo(&proxy, header_req, "via headers").unwrap(), "echo: via headers");
    let host_req = format!("ws://8765-{id}.sandbox.test/").into_client_request().unwrap();
    assert_eq!(ws_echo(&proxy, host_req, "via host").unwrap(), "echo: via host");

    // Once the sandbox has ended, the data plane refuses with 502.
    srv.release_and_wait(&id);
    let r = http.get(format!("{proxy_url}/sandboxes/{id}/8000/hello.txt")).send().unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.text().unwrap().contains("sandbox is not running"));
}
