//! Tests of the exposition text.

use super::*;

fn line_value(text: &str, prefix: &str) -> Option<String> {
    text.lines()
        .find(|l| l.starts_with(prefix) && l[prefix.len()..].starts_with(' '))
        .map(|l| l[prefix.len() + 1..].to_owned())
}

#[test]
fn counters_render_with_labels_and_help() {
    let m = Metrics::new();
    m.inc_request("/v1/chat/completions", 200);
    m.inc_request("/v1/chat/completions", 200);
    m.inc_request("/generate", 400);
    m.inc_finish("stop");
    m.add_prompt_tokens(10, 4);
    m.add_generation_tokens(7, 2);
    let text = m.render();
    assert!(text.contains("# TYPE glm47_requests_total counter"));
    let key = "glm47_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"}";
    assert_eq!(line_value(&text, key).as_deref(), Some("2"));
    let key = "glm47_requests_total{endpoint=\"/generate\",status=\"400\"}";
    assert_eq!(line_value(&text, key).as_deref(), Some("1"));
    let key = "glm47_request_finish_total{reason=\"stop\"}";
    assert_eq!(line_value(&text, key).as_deref(), Some("1"));
    assert_eq!(
        line_value(&text, "glm47_prompt_tokens_total").as_deref(),
        Some("10")
    );
    assert_eq!(
        line_value(&text, "glm47_cached_prompt_tokens_total").as_deref(),
        Some("4")
    );
    assert_eq!(
        line_value(&text, "glm47_generation_tokens_total").as_deref(),
        Some("7")
    );
}

#[test]
fn histogram_buckets_are_cumulative_and_end_with_inf() {
    let m = Metrics::new();
    m.ttft.observe(0.007);
    m.ttft.observe(0.05);
    m.ttft.observe(1000.0);
    let text = m.render();
    let name = "glm47_time_to_first_token_seconds";
    assert_eq!(
        line_value(&text, &format!("{name}_bucket{{le=\"0.005\"}}")).as_deref(),
        Some("0")
    );
    assert_eq!(
        line_value(&text, &format!("{name}_bucket{{le=\"0.01\"}}")).as_deref(),
        Some("1")
    );
    assert_eq!(
        line_value(&text, &format!("{name}_bucket{{le=\"0.06\"}}")).as_deref(),
        Some("2")
    );
    assert_eq!(
        line_value(&text, &format!("{name}_bucket{{le=\"80\"}}")).as_deref(),
        Some("2")
    );
    assert_eq!(
        line_value(&text, &format!("{name}_bucket{{le=\"+Inf\"}}")).as_deref(),
        Some("3")
    );
    assert_eq!(
        line_value(&text, &format!("{name}_count")).as_deref(),
        Some("3")
    );
    let sum: f64 = line_value(&text, &format!("{name}_sum"))
        .unwrap_or_default()
        .parse()
        .unwrap_or(0.0);
    assert!((sum - 1000.057).abs() < 1e-9);
}

#[test]
fn worker_stats_become_gauges_and_ratios() {
    let m = Metrics::new();
    m.set_worker_ready("tcp://w:1", true);
    m.set_worker_stats(
        "tcp://w:1",
        &Stats {
            waiting: Some(3),
            running: Some(5),
            kv_pages_used: Some(25),
            kv_pages_total: Some(100),
            prefix_hit_tokens: Some(30),
            prompt_tokens: Some(120),
            preemptions: Some(2),
            ..Stats::default()
        },
    );
    m.set_worker_stats(
        "tcp://w:1",
        &Stats {
            running: Some(6),
            ..Stats::default()
        },
    );
    let text = m.render();
    // Prometheus keeps `_total` for counters (promtool flags a gauge named so)
    for line in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let (name, kind) = line.split_once(' ').expect("a name and a type");
        assert_eq!(name.ends_with("_total"), kind == "counter", "{line}");
    }
    let label = "{worker=\"tcp://w:1\"}";
    assert_eq!(
        line_value(&text, &format!("glm47_worker_ready{label}")).as_deref(),
        Some("1")
    );
    assert_eq!(
        line_value(&text, &format!("glm47_num_requests_waiting{label}")).as_deref(),
        Some("3")
    );
    assert_eq!(
        line_value(&text, &format!("glm47_num_requests_running{label}")).as_deref(),
        Some("6")
    );
    assert_eq!(
        line_value(&text, &format!("glm47_kv_cache_usage_ratio{label}")).as_deref(),
        Some("0.25")
    );
    assert_eq!(
        line_value(&text, &format!("glm47_prefix_cache_hit_rate{label}")).as_deref(),
        Some("0.25")
    );
    assert_eq!(
        line_value(&text, &format!("glm47_preemptions_total{label}")).as_deref(),
        Some("2")
    );
    assert!(
        text.contains("# TYPE glm47_preemptions_total counter\n"),
        "{text}"
    );
    assert!(line_value(&text, &format!("glm47_spec_acceptance_rate{label}")).is_none());
    // a lost worker has no load: the one that replaces it reports its own
    m.set_worker_ready("tcp://w:1", false);
    assert_eq!(m.worker_stats("tcp://w:1"), Stats::default());
    assert!(line_value(&m.render(), &format!("glm47_num_requests_running{label}")).is_none());
}

#[test]
fn label_values_are_escaped() {
    let m = Metrics::new();
    m.inc_request("/a\"b\\c\nd", 404);
    let text = m.render();
    assert!(text.contains("endpoint=\"/a\\\"b\\\\c\\nd\""));
}

#[test]
fn every_sample_line_names_a_declared_metric() {
    let m = Metrics::new();
    m.inc_request("/health", 200);
    m.set_worker_ready("w", false);
    m.e2e.observe(1.5);
    let text = m.render();
    let declared: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| declared.contains(b)))
            .unwrap_or(name);
        assert!(declared.contains(&base), "undeclared sample {line}");
        let value = line.rsplit(' ').next().unwrap_or_default();
        assert!(
            value.parse::<f64>().is_ok() || value == "+Inf",
            "bad value in {line}"
        );
    }
}
