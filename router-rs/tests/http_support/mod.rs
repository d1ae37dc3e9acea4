//! A real router (axum app on an ephemeral port) in front of a scripted fake worker, with a tiny
//! byte-level model directory written for the test.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use glm47_router::config::RouterConfig;
use glm47_router::dispatch::PROBE_PREFIX;
use glm47_router::wire::{self, Message};
use serde_json::Value;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

mod script;
use script::{answer, schedule, worker_error};
pub use script::{Probes, Script};

const TEMPLATE: &str = "{% if tools %}<|system|>tools:{% for t in tools %}{{ t.function.name }};{% endfor %}{% endif %}\
{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}\
{% if add_generation_prompt %}<|assistant|>{{ '</think>' if (enable_thinking is defined and not enable_thinking) else '<think>' }}{% endif %}";

const SPECIAL: [&str; 5] = [
    "<|endoftext|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|tool|>",
];
/// The tags the output parsers read; the test tokenizer adds them as plain (non-special) tokens.
pub const TAGS: [&str; 8] = [
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<arg_key>",
    "</arg_key>",
    "<arg_value>",
    "</arg_value>",
];

/// Byte-level BPE without merges: one token per byte, so tokens split characters and tags.
pub fn byte_level_tokenizer() -> Tokenizer {
    let mut chars: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    chars.sort_unstable();
    let vocab: Vocab = chars
        .iter()
        .zip(0u32..)
        .map(|(c, i)| (c.to_string(), i))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, vec![])
        .build()
        .expect("bpe");
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    tokenizer
}

/// A model directory in the temp dir, removed on drop.
pub struct ModelDir {
    pub path: PathBuf,
    pub tokenizer: Tokenizer,
    pub eos: u32,
}

impl ModelDir {
    /// Byte-level BPE without merges (one token per byte), the special tokens of the template, and
    /// generation defaults temperature 0.6 / top_p 0.9.
    pub fn create() -> Self {
        let path =
            std::env::temp_dir().join(format!("glm47-http-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).expect("temp dir");
        let mut tokenizer = byte_level_tokenizer();
        let special: Vec<_> = SPECIAL.iter().map(|t| AddedToken::from(*t, true)).collect();
        tokenizer.add_special_tokens(&special);
        let tags: Vec<_> = TAGS.iter().map(|t| AddedToken::from(*t, false)).collect();
        tokenizer.add_tokens(&tags);
        tokenizer
            .save(path.join("tokenizer.json"), false)
            .expect("save tokenizer");
        let eos = tokenizer.token_to_id("<|endoftext|>").expect("eos id");
        std::fs::write(path.join("chat_template.jinja"), TEMPLATE).expect("template");
        let gen = serde_json::json!({"eos_token_id": [eos], "temperature": 0.6, "top_p": 0.9});
        std::fs::write(path.join("generation_config.json"), gen.to_string())
            .expect("generation config");
        Self {
            path,
            tokenizer,
            eos,
        }
    }

    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.tokenizer
            .encode(text, false)
            .expect("encodes")
            .get_ids()
            .to_vec()
    }
}

impl Drop for ModelDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A worker thread: answers `hello` with `ready` and every request with its [`Script`], one
/// request's steps after another's; it reads messages while it streams.
pub struct FakeWorker {
    pub addr: String,
    pub requests: Arc<Mutex<Vec<wire::Request>>>,
    pub aborts: Arc<Mutex<Vec<String>>>,
    /// `flush_cache` messages received.
    pub flushes: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeWorker {
    pub fn start(script: Script, max_req_total_len: u32) -> Self {
        let ctx = zmq::Context::new();
        let sock = ctx.socket(zmq::ROUTER).expect("router socket");
        sock.set_linger(0).expect("linger");
        sock.bind("tcp://127.0.0.1:*").expect("bind");
        let addr = sock.get_last_endpoint().expect("endpoint").expect("utf-8");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let aborts = Arc::new(Mutex::new(Vec::new()));
        let flushes = Arc::new(AtomicUsize::new(0));
        let f = flushes.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let (r, a, s) = (requests.clone(), aborts.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let _ctx = ctx;
            // Steps due, in order: (when, the router's identity, the message).
            let mut due: VecDeque<(Instant, Vec<u8>, Message)> = VecDeque::new();
            let send = |id: &[u8], m: &Message| {
                let bytes = wire::encode(m).expect("encode");
                sock.send_multipart([id, &bytes[..]], 0).expect("send");
            };
            while !s.load(Ordering::SeqCst) {
                while due.front().is_some_and(|(at, _, _)| *at <= Instant::now()) {
                    let (_, id, m) = due.pop_front().expect("front");
                    send(&id, &m);
                }
                let next = due.front().map_or(Duration::from_millis(20), |(at, _, _)| {
                    at.saturating_duration_since(Instant::now())
                });
                let wait = next.min(Duration::from_millis(20)).as_millis() as i64;
                if sock.poll(zmq::POLLIN, wait).expect("poll") == 0 {
                    continue;
                }
                let frames = sock.recv_multipart(0).expect("recv");
                let id = &frames[0];
                match wire::decode(&frames[1]).expect("valid message") {
                    Message::Hello(_) => send(id, &Message::Ready(ready(max_req_total_len))),
                    Message::Submit(submit) => {
                        for req in submit.reqs {
                            r.lock().expect("lock").push(req.clone());
                            let probe = req.rid.starts_with(PROBE_PREFIX);
                            match script.probes {
                                Probes::Ignore if probe => {}
                                Probes::Refuse(code) if probe => {
                                    send(id, &Message::Error(worker_error(&req, code)))
                                }
                                _ => schedule(&mut due, id, answer(&script, &req)),
                            }
                        }
                    }
                    Message::Abort(abort) => {
                        // as a worker does: the request stops and ends with `abort`
                        for rid in &abort.rids {
                            let mine = |m: &Message| matches!(m, Message::Step(s) if s.outs.iter().any(|o| &o.rid == rid));
                            due.retain(|(_, _, m)| !mine(m));
                            let out = wire::Output {
                                rid: rid.clone(),
                                finish: Some(wire::FinishReason::Abort),
                                ..wire::Output::default()
                            };
                            let step = wire::Step {
                                outs: vec![out],
                                ..wire::Step::default()
                            };
                            due.push_front((Instant::now(), id.to_vec(), Message::Step(step)));
                        }
                        a.lock().expect("lock").extend(abort.rids)
                    }
                    Message::FlushCache(_) => {
                        f.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => {}
                }
            }
        });
        Self {
            addr,
            requests,
            aborts,
            flushes,
            stop,
            thread: Some(thread),
        }
    }

    pub fn requests(&self) -> Vec<wire::Request> {
        self.requests.lock().expect("lock").clone()
    }
}

impl Drop for FakeWorker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn ready(max_req_total_len: u32) -> wire::Ready {
    wire::Ready {
        protocol: 1,
        model: "tiny-glm".into(),
        vocab_size: 300,
        eos_token_ids: vec![256],
        max_req_total_len,
        max_running_requests: 8,
        max_waiting_requests: 64,
        kv_capacity_tokens: 4096,
        mtp_step: 0,
        worker_id: "fake".into(),
    }
}

/// The router, serving on 127.0.0.1 until dropped.
pub struct Server {
    pub url: String,
    pub client: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Server {
    /// Starts the router for `worker_addr`; waits until `/health` is 200 when `wait_ready`.
    pub async fn start(
        model: &ModelDir,
        worker_addr: &str,
        extra: &[&str],
        wait_ready: bool,
    ) -> Self {
        let dir = model.path.to_string_lossy().into_owned();
        let mut args = vec![
            "glm47-router",
            "--worker-addr",
            worker_addr,
            "--model-dir",
            &dir,
        ];
        args.extend_from_slice(extra);
        let config = <RouterConfig as clap::Parser>::try_parse_from(args).expect("config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(glm47_router::http::serve_on(config, listener, async {
            let _ = rx.await;
        }));
        let server = Self {
            url,
            client: reqwest::Client::new(),
            shutdown: Some(tx),
            task: Some(task),
        };
        if wait_ready {
            server.wait_ready().await;
        }
        server
    }

    /// Signals the server to shut down (as SIGINT or SIGTERM would).
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Whether the server has stopped within `patience` (after [`Server::begin_shutdown`]).
    pub async fn stopped_within(&mut self, patience: Duration) -> bool {
        let Some(task) = self.task.as_mut() else {
            return true;
        };
        let done = tokio::time::timeout(patience, task).await.is_ok();
        if done {
            self.task = None;
        }
        done
    }

    async fn wait_ready(&self) {
        for _ in 0..200 {
            if let Ok(r) = self.client.get(format!("{}/health", self.url)).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the router never became ready");
    }

    async fn send(&self, path: &str, body: Value) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await
            .expect("post")
    }

    /// DELETEs `path`: the status and the JSON body.
    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let url = format!("{}{path}", self.url);
        let r = self.client.delete(url).send().await.expect("delete");
        (r.status().as_u16(), r.json().await.expect("json body"))
    }

    /// Polls the stored response `id` until its status is no longer `in_progress` (at most 10 s).
    pub async fn settled(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, body) = self.get(&format!("/v1/responses/{id}")).await;
            assert_eq!(status, 200, "{body}");
            if body["status"] != "in_progress" || Instant::now() > deadline {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// GETs `path`: the status and the JSON body.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("get");
        (r.status().as_u16(), r.json().await.expect("json body"))
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self.send(path, body).await;
        let status = r.status().as_u16();
        (status, r.json().await.expect("json body"))
    }

    /// Posts and returns the `data:` payloads of the event stream, in order.
    pub async fn post_stream(&self, path: &str, body: Value) -> (u16, Vec<String>) {
        let r = self.send(path, body).await;
        let status = r.status().as_u16();
        let text = r.text().await.expect("body");
        let events = text
            .split("\n\n")
            .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data:")))
            .map(|d| d.trim_start().to_owned())
            .collect();
        (status, events)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A model dir, a worker answering `reply` (chunked by `chunk` ids) and a ready router.
pub async fn setup(reply: &str, chunk: usize, extra: &[&str]) -> (ModelDir, FakeWorker, Server) {
    setup_with(reply, extra, |s| s.chunk = chunk).await
}

/// [`setup`] with the script adjusted by `edit`.
pub async fn setup_with(
    reply: &str,
    extra: &[&str],
    edit: impl FnOnce(&mut Script),
) -> (ModelDir, FakeWorker, Server) {
    let model = ModelDir::create();
    let mut script = Script::reply(model.encode(reply), 1);
    edit(&mut script);
    let worker = FakeWorker::start(script, 4096);
    let server = Server::start(&model, &worker.addr, extra, true).await;
    (model, worker, server)
}

/// The answer text of a chat stream's chunks (choice 0's `delta.content`, joined).
pub fn streamed_content(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

/// Parses every event but `[DONE]` as JSON.
pub fn json_events(events: &[String]) -> Vec<Value> {
    events
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).expect("json event"))
        .collect()
}
