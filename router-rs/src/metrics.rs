//! Router metrics in the Prometheus text exposition format (version 0.0.4).
//!
//! One [`Metrics`] is shared (`Arc`) by the HTTP layer, which counts requests per endpoint and status,
//! and the dispatcher, which counts tokens and finishes, times every request (TTFT, inter-token
//! latency, end-to-end latency) and mirrors each worker's latest `stats`. Every method takes `&self`
//! and is safe to call from any thread; [`Metrics::render`] produces the `/metrics` body.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::wire::Stats;
mod histogram;

pub use histogram::Histogram;
use histogram::{E2E_BUCKETS, ITL_BUCKETS, TTFT_BUCKETS};

/// The latest load report of one worker, plus whether it is ready.
#[derive(Debug, Clone, Default, PartialEq)]
struct WorkerGauges {
    ready: bool,
    stats: Stats,
}

/// All router metrics.
#[derive(Debug)]
pub struct Metrics {
    /// HTTP requests by (endpoint, status code).
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Finished generation requests by finish reason (`stop`, `length`, `abort`, `error`).
    finishes: Mutex<BTreeMap<String, u64>>,
    prompt_tokens: AtomicU64,
    generation_tokens: AtomicU64,
    cached_prompt_tokens: AtomicU64,
    spec_accepted_tokens: AtomicU64,
    /// Prompts sent to the worker that holds their longest prefix (prefix-aware balancing).
    prefix_routed: AtomicU64,
    /// Requests submitted to a worker and not finished yet.
    in_flight: AtomicU64,
    workers: Mutex<BTreeMap<String, WorkerGauges>>,
    /// Seconds from submission to the first generated token.
    pub ttft: Histogram,
    /// Seconds from a streaming request's arrival at the HTTP server (its headers read) to the
    /// start of its response, which carries the first chunk: the time to first token as the
    /// router sees it from outside, request parsing, tokenization and dispatch included.
    pub first_chunk: Histogram,
    /// Seconds between consecutive generated tokens of one request.
    pub itl: Histogram,
    /// Seconds from submission to the finish.
    pub e2e: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Empty metrics: every counter at zero, no worker known.
    pub fn new() -> Self {
        Self {
            requests: Mutex::new(BTreeMap::new()),
            finishes: Mutex::new(BTreeMap::new()),
            prompt_tokens: AtomicU64::new(0),
            generation_tokens: AtomicU64::new(0),
            cached_prompt_tokens: AtomicU64::new(0),
            spec_accepted_tokens: AtomicU64::new(0),
            prefix_routed: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            workers: Mutex::new(BTreeMap::new()),
            ttft: Histogram::new(TTFT_BUCKETS),
            first_chunk: Histogram::new(TTFT_BUCKETS),
            itl: Histogram::new(ITL_BUCKETS),
            e2e: Histogram::new(E2E_BUCKETS),
        }
    }

    /// Counts one HTTP request answered on `endpoint` (a route such as `/v1/chat/completions`)
    /// with `status`.
    pub fn inc_request(&self, endpoint: &str, status: u16) {
        let mut map = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry((endpoint.to_owned(), status)).or_default() += 1;
    }

    /// Counts one finished generation request (`stop`, `length`, `abort` or `error`).
    pub fn inc_finish(&self, reason: &str) {
        let mut map = self.finishes.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry(reason.to_owned()).or_default() += 1;
    }

    /// Adds the prompt length and prefix-cache hits of a request (from its first output).
    pub fn add_prompt_tokens(&self, prompt: u64, cached: u64) {
        self.prompt_tokens.fetch_add(prompt, Ordering::Relaxed);
        self.cached_prompt_tokens
            .fetch_add(cached, Ordering::Relaxed);
    }

    /// Adds generated tokens, of which `spec_accepted` came from accepted drafts.
    /// Tokens generated for clients so far.
    pub fn generation_tokens(&self) -> u64 {
        self.generation_tokens.load(Ordering::Relaxed)
    }

    pub fn add_generation_tokens(&self, tokens: u64, spec_accepted: u64) {
        self.generation_tokens.fetch_add(tokens, Ordering::Relaxed);
        self.spec_accepted_tokens
            .fetch_add(spec_accepted, Ordering::Relaxed);
    }

    /// Counts one prompt sent to a worker for the prefix it was sent before.
    pub fn inc_prefix_routed(&self) {
        self.prefix_routed.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets the number of requests submitted to workers and not finished.
    pub fn set_in_flight(&self, n: u64) {
        self.in_flight.store(n, Ordering::Relaxed);
    }

    /// Records whether the worker at `addr` is ready; one that is not has no load to report (a
    /// lost worker's last stats would otherwise stand for the one that replaces it).
    pub fn set_worker_ready(&self, addr: &str, ready: bool) {
        let mut map = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        let slot = map.entry(addr.to_owned()).or_default();
        slot.ready = ready;
        if !ready {
            slot.stats = Stats::default();
        }
    }

    /// The last load the worker at `addr` reported (every key `None` before its first step).
    pub fn worker_stats(&self, addr: &str) -> Stats {
        let map = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        map.get(addr).map(|w| w.stats.clone()).unwrap_or_default()
    }

    /// Merges a worker's `stats` into its gauges (absent keys keep their last value).
    pub fn set_worker_stats(&self, addr: &str, stats: &Stats) {
        let mut map = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        let slot = &mut map.entry(addr.to_owned()).or_default().stats;
        let merge = |old: &mut Option<u64>, new: Option<u64>| {
            if new.is_some() {
                *old = new;
            }
        };
        merge(&mut slot.waiting, stats.waiting);
        merge(&mut slot.running, stats.running);
        merge(&mut slot.kv_pages_used, stats.kv_pages_used);
        merge(&mut slot.kv_pages_cached, stats.kv_pages_cached);
        merge(&mut slot.kv_pages_total, stats.kv_pages_total);
        merge(&mut slot.prefix_hit_tokens, stats.prefix_hit_tokens);
        merge(&mut slot.prompt_tokens, stats.prompt_tokens);
        merge(&mut slot.spec_drafted, stats.spec_drafted);
        merge(&mut slot.spec_accepted, stats.spec_accepted);
        merge(&mut slot.preemptions, stats.preemptions);
    }

    /// The whole exposition, ready to serve with content type `text/plain; version=0.0.4`.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        self.render_counters(&mut out);
        self.render_workers(&mut out);
        self.ttft.render(
            &mut out,
            "glm47_time_to_first_token_seconds",
            "Seconds from submission to the first generated token.",
        );
        self.first_chunk.render(
            &mut out,
            "glm47_http_time_to_first_chunk_seconds",
            "Seconds from a streaming request's arrival to the start of its response (the first chunk).",
        );
        self.itl.render(
            &mut out,
            "glm47_inter_token_latency_seconds",
            "Seconds between consecutive generated tokens of a request.",
        );
        self.e2e.render(
            &mut out,
            "glm47_e2e_request_latency_seconds",
            "Seconds from submission to the finish of a request.",
        );
        if let Some(bytes) = resident_bytes() {
            header(
                &mut out,
                "process_resident_memory_bytes",
                "Resident memory of the router process, in bytes.",
                "gauge",
            );
            let _ = writeln!(out, "process_resident_memory_bytes {bytes}");
        }
        out
    }

    fn render_counters(&self, out: &mut String) {
        header(
            out,
            "glm47_requests_total",
            "HTTP requests by endpoint and status.",
            "counter",
        );
        let requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        for ((endpoint, status), n) in requests.iter() {
            let endpoint = escape_label(endpoint);
            let _ = writeln!(
                out,
                "glm47_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}"
            );
        }
        drop(requests);
        header(
            out,
            "glm47_request_finish_total",
            "Generation requests finished, by reason.",
            "counter",
        );
        let finishes = self.finishes.lock().unwrap_or_else(|e| e.into_inner());
        for (reason, n) in finishes.iter() {
            let reason = escape_label(reason);
            let _ = writeln!(out, "glm47_request_finish_total{{reason=\"{reason}\"}} {n}");
        }
        drop(finishes);
        let plain = [
            (
                "glm47_prompt_tokens_total",
                "Prompt tokens of finished prefills.",
                &self.prompt_tokens,
            ),
            (
                "glm47_generation_tokens_total",
                "Generated tokens.",
                &self.generation_tokens,
            ),
            (
                "glm47_cached_prompt_tokens_total",
                "Prompt tokens served from the prefix cache.",
                &self.cached_prompt_tokens,
            ),
            (
                "glm47_spec_accepted_tokens_total",
                "Generated tokens that were accepted speculative drafts.",
                &self.spec_accepted_tokens,
            ),
            (
                "glm47_prefix_routed_total",
                "Prompts sent to the worker that was sent their longest prefix (prefix-aware balancing).",
                &self.prefix_routed,
            ),
        ];
        for (name, help, value) in plain {
            header(out, name, help, "counter");
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        header(
            out,
            "glm47_requests_in_flight",
            "Requests submitted to workers and not finished.",
            "gauge",
        );
        let _ = writeln!(
            out,
            "glm47_requests_in_flight {}",
            self.in_flight.load(Ordering::Relaxed)
        );
    }

    fn render_workers(&self, out: &mut String) {
        let workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        type Getter = fn(&WorkerGauges) -> Option<f64>;
        let gauges: [(&str, &str, Getter); 8] = [
            (
                "glm47_worker_ready",
                "1 when the worker answered hello.",
                |w| Some(if w.ready { 1.0 } else { 0.0 }),
            ),
            (
                "glm47_num_requests_waiting",
                "Requests queued in the worker.",
                |w| w.stats.waiting.map(|v| v as f64),
            ),
            (
                "glm47_num_requests_running",
                "Requests in the worker's running batch.",
                |w| w.stats.running.map(|v| v as f64),
            ),
            (
                "glm47_kv_pages_used",
                "KV pages used by running requests.",
                |w| w.stats.kv_pages_used.map(|v| v as f64),
            ),
            (
                "glm47_kv_pages_capacity",
                "Size of the worker's KV page pool.",
                |w| w.stats.kv_pages_total.map(|v| v as f64),
            ),
            (
                "glm47_kv_cache_usage_ratio",
                "Fraction of KV pages used by running requests.",
                |w| ratio(w.stats.kv_pages_used, w.stats.kv_pages_total),
            ),
            (
                "glm47_prefix_cache_hit_rate",
                "Prompt tokens served from the prefix cache / prompt tokens.",
                |w| ratio(w.stats.prefix_hit_tokens, w.stats.prompt_tokens),
            ),
            (
                "glm47_spec_acceptance_rate",
                "Accepted / proposed MTP draft tokens.",
                |w| ratio(w.stats.spec_accepted, w.stats.spec_drafted),
            ),
        ];
        for (name, help, get) in gauges {
            header(out, name, help, "gauge");
            for (addr, w) in workers.iter() {
                if let Some(v) = get(w) {
                    let addr = escape_label(addr);
                    let _ = writeln!(out, "{name}{{worker=\"{addr}\"}} {}", format_float(v));
                }
            }
        }
        // counted by the worker since it started (a restarted worker counts from zero again)
        let name = "glm47_preemptions_total";
        let help = "Requests preempted (pages freed, recomputed later).";
        header(out, name, help, "counter");
        for (addr, w) in workers.iter() {
            if let Some(v) = w.stats.preemptions {
                let addr = escape_label(addr);
                let _ = writeln!(out, "{name}{{worker=\"{addr}\"}} {v}");
            }
        }
    }
}

/// This process's resident memory (Linux: /proc/self/statm), None elsewhere.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    #[cfg(unix)]
    // SAFETY: sysconf only reads a configuration value.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    #[cfg(not(unix))]
    let page = 4096;
    Some(pages * u64::try_from(page).ok()?)
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn ratio(num: Option<u64>, den: Option<u64>) -> Option<f64> {
    match (num, den) {
        (Some(n), Some(d)) if d > 0 => Some(n as f64 / d as f64),
        _ => None,
    }
}

/// Formats a float the way Prometheus parsers expect (`1`, `0.25`, `+Inf`).
pub(super) fn format_float(v: f64) -> String {
    if v.is_infinite() {
        return if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    format!("{v}")
}

/// Escapes a label value: backslash, double quote and newline.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests;
