//! Wire tests against the agent served in-process on 127.0.0.1 (random port, temp home):
//! the protobuf codec (server streams `application/connect+proto`, unary
//! `application/proto`), a PTY process, directory watchers, and gzip on `/files`.
//! Requests are encoded with the crate's own message types; envelopes are built by hand.

use std::io::{Read, Write};
use std::time::Duration;

use agentbox_envd::proto::filesystem as fsp;
use agentbox_envd::proto::process as pp;
use bytes::{Buf, BytesMut};
use futures::StreamExt;
use prost::Message;

struct Agent {
    url: String,
    home: tempfile::TempDir,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Agent {
    async fn start() -> Agent {
        let home = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let config =
            agentbox_envd::Config { default_user: "root".into(), home_override: Some(home.path().to_path_buf()) };
        let server = tokio::spawn(agentbox_envd::serve(listener, config));
        Agent { url, home, server }
    }

    fn path(&self, rel: &str) -> std::path::PathBuf {
        self.home.path().join(rel)
    }

    /// A unary call with the protobuf codec: the decoded answer, or the status and JSON error.
    async fn unary<Resp: Message + Default>(
        &self,
        method: &str,
        req: &impl Message,
    ) -> Result<Resp, (u16, serde_json::Value)> {
        let resp = reqwest::Client::new()
            .post(format!("{}/{method}", self.url))
            .header("content-type", "application/proto")
            .body(req.encode_to_vec())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        if status != 200 {
            return Err((status, resp.json().await.unwrap()));
        }
        assert_eq!(resp.headers()["content-type"], "application/proto");
        Ok(Resp::decode(resp.bytes().await.unwrap()).unwrap())
    }

    /// Opens a server stream with the protobuf codec.
    async fn stream(&self, method: &str, req: &impl Message, headers: &[(&str, &str)]) -> Frames {
        let payload = req.encode_to_vec();
        let mut body = vec![0u8];
        body.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
        body.extend_from_slice(&payload);
        let mut rb = reqwest::Client::new()
            .post(format!("{}/{method}", self.url))
            .header("content-type", "application/connect+proto")
            .body(body);
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        let resp = rb.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/connect+proto");
        Frames { body: Box::pin(resp.bytes_stream()), buf: BytesMut::new() }
    }
}

type ByteStream = std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// Reads Connect envelopes off a streaming response.
struct Frames {
    body: ByteStream,
    buf: BytesMut,
}

enum Frame<T> {
    Msg(T),
    /// The end-of-stream JSON (`{}` or `{"error": …}`).
    End(serde_json::Value),
}

impl Frames {
    /// The next frame, or `None` after 10 s without one.
    async fn next<T: Message + Default>(&mut self) -> Option<Frame<T>> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() >= 5 + len {
                    let flags = self.buf[0];
                    self.buf.advance(5);
                    let payload = self.buf.split_to(len);
                    return Some(if flags & 0x02 != 0 {
                        Frame::End(serde_json::from_slice(&payload).unwrap())
                    } else {
                        assert_eq!(flags, 0, "messages must not be compressed");
                        Frame::Msg(T::decode(payload.freeze()).unwrap())
                    });
                }
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Ok(Some(Ok(chunk))) => self.buf.extend_from_slice(&chunk),
                Ok(Some(Err(e))) => panic!("stream broke: {e}"),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    async fn msg<T: Message + Default>(&mut self) -> T {
        match self.next().await {
            Some(Frame::Msg(m)) => m,
            Some(Frame::End(v)) => panic!("stream ended early: {v}"),
            None => panic!("no message within 10 s"),
        }
    }
}

fn start_request(cmd: &str, args: &[&str]) -> pp::StartRequest {
    pp::StartRequest {
        process: Some(pp::ProcessConfig {
            cmd: cmd.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

// ---- protobuf codec ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_start_streams_events_over_connect_proto() {
    let a = Agent::start().await;
    let req = start_request("/bin/sh", &["-c", "echo out; echo err >&2; exit 3"]);
    let mut frames = a.stream("process.Process/Start", &req, &[]).await;
    let first: pp::StartResponse = frames.msg().await;
    let pid = first.event.unwrap().start.expect("the first event is the start event").pid;
    assert!(pid > 0);
    let (mut stdout, mut stderr, mut end) = (Vec::new(), Vec::new(), None);
    loop {
        match frames.next::<pp::StartResponse>().await {
            Some(Frame::Msg(m)) => {
                let ev = m.event.unwrap();
                if let Some(d) = ev.data {
                    stdout.extend(d.stdout.unwrap_or_default());
                    stderr.extend(d.stderr.unwrap_or_default());
                }
                if let Some(e) = ev.end {
                    end = Some(e);
                }
            }
            Some(Frame::End(v)) => {
                assert_eq!(v, serde_json::json!({}));
                break;
            }
            None => panic!("no end-of-stream frame"),
        }
    }
    assert_eq!((stdout.as_slice(), stderr.as_slice()), (&b"out\n"[..], &b"err\n"[..]));
    let end = end.expect("an end event");
    assert_eq!((end.exit_code, end.exited, end.status.as_str()), (3, true, "exit status 3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesystem_calls_round_trip_over_unary_proto() {
    let a = Agent::start().await;
    let made: fsp::EntryResponse =
        a.unary("filesystem.Filesystem/MakeDir", &fsp::PathRequest { path: "d/sub".into() }).await.unwrap();
    let entry = made.entry.unwrap();
    assert_eq!(entry.r#type, fsp::FileType::Directory as i32);
    assert_eq!(entry.path, a.path("d/sub").to_string_lossy());
    std::fs::write(a.path("d/sub/f.txt"), "12345").unwrap();

    let st: fsp::EntryResponse =
        a.unary("filesystem.Filesystem/Stat", &fsp::PathRequest { path: "d/sub/f.txt".into() }).await.unwrap();
    let e = st.entry.unwrap();
    assert_eq!((e.name.as_str(), e.size, e.r#type), ("f.txt", 5, fsp::FileType::File as i32));
    assert!(e.modified_time.is_some_and(|t| t.seconds > 0));

    let ls: fsp::ListDirResponse =
        a.unary("filesystem.Filesystem/ListDir", &fsp::ListDirRequest { path: "d".into(), depth: 2 }).await.unwrap();
    let names: Vec<_> = ls.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["sub", "f.txt"]);

    let mv = fsp::MoveRequest { source: "d/sub/f.txt".into(), destination: "d/g.txt".into() };
    let moved: fsp::EntryResponse = a.unary("filesystem.Filesystem/Move", &mv).await.unwrap();
    assert_eq!(moved.entry.unwrap().path, a.path("d/g.txt").to_string_lossy());
    assert_eq!(std::fs::read_to_string(a.path("d/g.txt")).unwrap(), "12345");

    let _: fsp::Empty = a.unary("filesystem.Filesystem/Remove", &fsp::PathRequest { path: "d".into() }).await.unwrap();
    assert!(!a.path("d").exists());
    let (status, err) = a
        .unary::<fsp::EntryResponse>("filesystem.Filesystem/Stat", &fsp::PathRequest { path: "d".into() })
        .await
        .unwrap_err();
    assert_eq!((status, err["code"].as_str()), (404, Some("not_found")));
}

// ---- PTY ----

/// Reads PTY output until it contains `needle` (or fails after 10 s); returns all of it.
async fn pty_until(frames: &mut Frames, needle: &str) -> String {
    let mut out = Vec::new();
    while !String::from_utf8_lossy(&out).contains(needle) {
        match frames.next::<pp::StartResponse>().await {
            Some(Frame::Msg(m)) => {
                if let Some(d) = m.event.and_then(|e| e.data) {
                    assert!(d.stdout.is_none() && d.stderr.is_none(), "a pty process reports pty data only");
                    out.extend(d.pty.unwrap_or_default());
                }
            }
            other => panic!(
                "pty output ended before {needle:?} (end: {}):\n{}",
                matches!(other, Some(Frame::End(_))),
                String::from_utf8_lossy(&out)
            ),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn pty_input(a: &Agent, pid: u32, text: &str) {
    let req = pp::SendInputRequest {
        process: Some(pp::ProcessSelector { pid: Some(pid), tag: None }),
        input: Some(pp::ProcessInput { stdin: None, pty: Some(text.as_bytes().to_vec()) }),
    };
    let _: pp::SendInputResponse = a.unary("process.Process/SendInput", &req).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pty_process_echoes_input_resizes_and_exits() {
    let a = Agent::start().await;
    let mut req = start_request("/bin/sh", &[]);
    req.pty = Some(pp::Pty { size: Some(pp::PtySize { cols: 80, rows: 24 }) });
    let mut frames = a.stream("process.Process/Start", &req, &[]).await;
    let first: pp::StartResponse = frames.msg().await;
    let pid = first.event.unwrap().start.unwrap().pid;

    pty_input(&a, pid, "stty size; echo sum-$((6*7))\n").await;
    let out = pty_until(&mut frames, "sum-42").await;
    assert!(out.contains("echo sum-$((6*7))"), "the terminal echoes typed input: {out:?}");
    assert!(out.contains("24 80"), "the pty has the requested size: {out:?}");

    let resize = pp::UpdateRequest {
        process: Some(pp::ProcessSelector { pid: Some(pid), tag: None }),
        pty: Some(pp::Pty { size: Some(pp::PtySize { cols: 100, rows: 40 }) }),
    };
    let _: pp::UpdateResponse = a.unary("process.Process/Update", &resize).await.unwrap();
    pty_input(&a, pid, "stty size\n").await;
    pty_until(&mut frames, "40 100").await;

    pty_input(&a, pid, "exit 5\n").await;
    let end = loop {
        match frames.next::<pp::StartResponse>().await {
            Some(Frame::Msg(m)) => {
                if let Some(e) = m.event.and_then(|e| e.end) {
                    break e;
                }
            }
            _ => panic!("no end event after exit"),
        }
    };
    assert_eq!(end.exit_code, 5);
}

// ---- watchers ----

fn watch_request(path: &str, recursive: bool) -> fsp::WatchDirRequest {
    fsp::WatchDirRequest { path: path.into(), recursive, ..Default::default() }
}

fn has(events: &[fsp::FilesystemEvent], name: &str, ty: fsp::EventType) -> bool {
    events.iter().any(|e| e.name == name && e.r#type == ty as i32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_dir_streams_recursive_events_and_keepalives() {
    let a = Agent::start().await;
    std::fs::create_dir_all(a.path("w/sub")).unwrap();
    let mut frames = a
        .stream("filesystem.Filesystem/WatchDir", &watch_request("w", true), &[("keepalive-ping-interval", "1")])
        .await;
    let first: fsp::WatchDirResponse = frames.msg().await;
    assert!(first.start.is_some() && first.filesystem.is_none(), "the first message is the start event");

    let f = a.path("w/sub/f.txt");
    std::fs::write(&f, "hello").unwrap();
    std::fs::remove_file(&f).unwrap();
    let mut events = Vec::new();
    while !has(&events, "sub/f.txt", fsp::EventType::Remove) {
        let m: fsp::WatchDirResponse = frames.msg().await;
        events.extend(m.filesystem);
    }
    assert!(has(&events, "sub/f.txt", fsp::EventType::Create), "{events:?}");
    assert!(has(&events, "sub/f.txt", fsp::EventType::Write), "{events:?}");
    assert!(events.iter().all(|e| e.entry.is_none()), "no entry info unless include_entry");

    // Idle: keepalives keep the stream alive.
    let idle: fsp::WatchDirResponse = frames.msg().await;
    assert!(idle.keepalive.is_some(), "an idle watch sends keepalives: {idle:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_dir_with_entries_and_plain_watch_scope() {
    let a = Agent::start().await;
    std::fs::create_dir_all(a.path("p/sub")).unwrap();
    let mut req = watch_request("p", false);
    req.include_entry = true;
    let mut frames = a.stream("filesystem.Filesystem/WatchDir", &req, &[]).await;
    let _start: fsp::WatchDirResponse = frames.msg().await;
    std::fs::write(a.path("p/sub/ignored.txt"), "x").unwrap();
    std::fs::write(a.path("p/top.txt"), "abc").unwrap();
    let mut events = Vec::new();
    while !has(&events, "top.txt", fsp::EventType::Write) {
        let m: fsp::WatchDirResponse = frames.msg().await;
        events.extend(m.filesystem);
    }
    assert!(!events.iter().any(|e| e.name.contains("ignored")), "a plain watch skips subdirectories: {events:?}");
    let created = events.iter().find(|e| e.name == "top.txt").unwrap();
    let entry = created.entry.as_ref().expect("include_entry attaches the entry");
    assert_eq!(entry.path, a.path("p/top.txt").to_string_lossy());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_dir_rejects_missing_paths_and_files() {
    let a = Agent::start().await;
    std::fs::write(a.path("file.txt"), "x").unwrap();
    for (path, code) in [("missing", "not_found"), ("file.txt", "invalid_argument")] {
        let mut frames = a.stream("filesystem.Filesystem/WatchDir", &watch_request(path, false), &[]).await;
        match frames.next::<fsp::WatchDirResponse>().await {
            Some(Frame::End(v)) => assert_eq!(v["error"]["code"], code, "{path}: {v}"),
            _ => panic!("{path}: expected an error end frame"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polled_watcher_buffers_events_until_removed() {
    let a = Agent::start().await;
    std::fs::create_dir(a.path("pw")).unwrap();
    let created: fsp::WatcherId =
        a.unary("filesystem.Filesystem/CreateWatcher", &watch_request("pw", true)).await.unwrap();
    let id = fsp::WatcherId { watcher_id: created.watcher_id.clone() };
    assert!(id.watcher_id.starts_with('w'), "{id:?}");

    std::fs::create_dir(a.path("pw/later")).unwrap();
    std::fs::write(a.path("pw/later/a.txt"), "x").unwrap();
    let mut events = Vec::new();
    for _ in 0..200 {
        let r: fsp::GetWatcherEventsResponse = a.unary("filesystem.Filesystem/GetWatcherEvents", &id).await.unwrap();
        events.extend(r.events);
        if has(&events, "later/a.txt", fsp::EventType::Write) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(has(&events, "later", fsp::EventType::Create), "{events:?}");
    assert!(has(&events, "later/a.txt", fsp::EventType::Create), "{events:?}");
    assert!(has(&events, "later/a.txt", fsp::EventType::Write), "{events:?}");
    // Drained: nothing new happened.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r: fsp::GetWatcherEventsResponse = a.unary("filesystem.Filesystem/GetWatcherEvents", &id).await.unwrap();
    assert!(r.events.is_empty(), "{:?}", r.events);

    let _: fsp::Empty = a.unary("filesystem.Filesystem/RemoveWatcher", &id).await.unwrap();
    let (status, err) =
        a.unary::<fsp::GetWatcherEventsResponse>("filesystem.Filesystem/GetWatcherEvents", &id).await.unwrap_err();
    assert_eq!((status, err["code"].as_str()), (404, Some("not_found")));
    let (status, _) = a.unary::<fsp::Empty>("filesystem.Filesystem/RemoveWatcher", &id).await.unwrap_err();
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_watcher_errors_match_envd_over_json() {
    let a = Agent::start().await;
    std::fs::write(a.path("file.txt"), "x").unwrap();
    for (path, status, code) in [("missing", 404, "not_found"), ("file.txt", 400, "invalid_argument")] {
        let resp = reqwest::Client::new()
            .post(format!("{}/filesystem.Filesystem/CreateWatcher", a.url))
            .header("content-type", "application/json")
            .body(serde_json::json!({"path": path, "recursive": true}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{path}");
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["code"], code, "{path}: {v}");
    }
}

// ---- gzip on /files ----

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(data).read_to_end(&mut out).unwrap();
    out
}

fn sample(len: usize) -> Vec<u8> {
    // Compressible but not trivial: a repeating ramp with a counter mixed in.
    (0..len).map(|i| ((i % 251) ^ (i / 4096)) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_octet_stream_upload_and_gzip_download_round_trip() {
    let a = Agent::start().await;
    let data = sample(3_000_000);
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{}/files?path=gz/data.bin", a.url))
        .header("content-type", "application/octet-stream")
        .header("content-encoding", "gzip")
        .body(gzip(&data))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(std::fs::read(a.path("gz/data.bin")).unwrap(), data, "the stored file is the decompressed upload");

    let plain = client.get(format!("{}/files?path=gz/data.bin", a.url)).send().await.unwrap();
    assert!(plain.headers().get("content-encoding").is_none());
    assert_eq!(plain.bytes().await.unwrap().as_ref(), data.as_slice());

    let zipped =
        client.get(format!("{}/files?path=gz/data.bin", a.url)).header("accept-encoding", "gzip").send().await.unwrap();
    assert_eq!(zipped.status(), 200);
    assert_eq!(zipped.headers()["content-encoding"], "gzip");
    let body = zipped.bytes().await.unwrap();
    assert!(body.len() < data.len() / 2, "the download is compressed ({} bytes)", body.len());
    assert_eq!(gunzip(&body), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_multipart_upload_is_decompressed_and_bad_encodings_are_400() {
    let a = Agent::start().await;
    let boundary = "agentboxBOUNDARY";
    let mut form = Vec::new();
    form.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"m.txt\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    form.extend_from_slice(b"multipart through gzip\n");
    form.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    // Two gzip members back to back: still one body.
    let (head, tail) = form.split_at(40);
    let mut body = gzip(head);
    body.extend(gzip(tail));
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{}/files?path=mp/m.txt", a.url))
        .header("content-type", format!("multipart/form-data; boundary={boundary}"))
        .header("content-encoding", "gzip")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(std::fs::read_to_string(a.path("mp/m.txt")).unwrap(), "multipart through gzip\n");

    let bad = client
        .post(format!("{}/files?path=bad.bin", a.url))
        .header("content-type", "application/octet-stream")
        .header("content-encoding", "gzip")
        .body(b"this is not gzip".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let br = client
        .post(format!("{}/files?path=br.bin", a.url))
        .header("content-type", "application/octet-stream")
        .header("content-encoding", "br")
        .body(b"x".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(br.status(), 400);
    let v: serde_json::Value = br.json().await.unwrap();
    assert!(v["message"].as_str().unwrap().contains("unsupported Content-Encoding"), "{v}");
    assert!(!a.path("br.bin").exists());
}
