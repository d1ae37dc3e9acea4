use super::*;

fn parse(args: &[&str]) -> Result<RouterConfig, clap::Error> {
    RouterConfig::try_parse_from(std::iter::once("glm47-router").chain(args.iter().copied()))
}

#[test]
fn defaults_apply_when_only_the_worker_is_given() {
    let c = parse(&["--worker-addr", "tcp://127.0.0.1:5557"]).expect("parses");
    assert_eq!(c.worker_addr, vec!["tcp://127.0.0.1:5557"]);
    assert_eq!(c.host, "0.0.0.0");
    assert_eq!(c.port, 8000);
    assert_eq!(c.max_body_bytes, 32 * 1024 * 1024);
    assert_eq!(c.tool_call_parser, None);
    assert_eq!(c.max_req_total_len, None);
    assert_eq!(c.listen_addr(), "0.0.0.0:8000");
}

#[test]
fn log_levels_are_levels_or_target_directives() {
    for ok in [
        "info",
        "WARNING",
        "debug,glm47_router=trace",
        "tower_http=off",
        "error",
    ] {
        let cfg = parse(&["--worker-addr", "tcp://x:1", "--log-level", ok]).unwrap();
        assert_eq!(cfg.log_level, ok);
    }
    for bad in ["verbose", "", "glm47_router=loud", "=debug", "info,verbose"] {
        let err = parse(&["--worker-addr", "tcp://x:1", "--log-level", bad]).unwrap_err();
        assert!(err.to_string().contains("neither a level"), "{bad}: {err}");
    }
}

#[test]
fn lightllm_underscore_spellings_are_aliases() {
    let c = parse(&[
        "--worker_addr",
        "tcp://a:1",
        "--worker-addr",
        "tcp://b:2",
        "--model_dir",
        "/m",
        "--tool_call_parser",
        "glm47",
        "--reasoning_parser",
        "glm45",
        "--max_req_total_len",
        "202752",
    ])
    .expect("parses");
    assert_eq!(c.worker_addr, vec!["tcp://a:1", "tcp://b:2"]);
    assert_eq!(c.model_dir, Some(PathBuf::from("/m")));
    assert_eq!(c.tool_call_parser, Some(ToolCallParser::Glm47));
    assert_eq!(c.reasoning_parser, Some(ReasoningParser::Glm45));
    assert_eq!(c.max_req_total_len, Some(202752));
    // and vLLM's and SGLang's names of the same settings
    for (model, len) in [
        ("--model", "--max-model-len"),
        ("--model-path", "--context-length"),
    ] {
        let c = parse(&["--worker-addr", "tcp://a:1", model, "/n", len, "4096"]).expect("parses");
        assert_eq!(c.model_dir, Some(PathBuf::from("/n")));
        assert_eq!(c.max_req_total_len, Some(4096));
    }
}

#[test]
fn chat_template_reads_a_file_or_takes_the_text() {
    let dir = std::env::temp_dir().join(format!("glm47-template-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("t.jinja");
    std::fs::write(&file, "{{ messages[0].content }}").expect("write");
    let file_arg = file.to_string_lossy().into_owned();
    let c = parse(&["--worker-addr", "tcp://a:1", "--chat-template", &file_arg]).expect("ok");
    let source = c.chat_template_source().expect("reads");
    assert_eq!(source.as_deref(), Some("{{ messages[0].content }}"));
    let inline = "{% for m in messages %}{{ m.content }}{% endfor %}";
    let c = parse(&["--worker-addr", "tcp://a:1", "--chat_template", inline]).expect("ok");
    assert_eq!(
        c.chat_template_source().expect("text").as_deref(),
        Some(inline)
    );
    let c = parse(&[
        "--worker-addr",
        "tcp://a:1",
        "--chat-template",
        "/no/such.jinja",
    ]);
    let err = c
        .expect("parses")
        .chat_template_source()
        .expect_err("neither");
    assert!(err.to_string().contains("no such file"), "{err}");
    let c = parse(&["--worker-addr", "tcp://a:1"]).expect("parses");
    assert_eq!(c.chat_template_source().expect("none"), None);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn auto_tool_choice_needs_a_tool_call_parser() {
    assert!(parse(&["--worker-addr", "tcp://a:1", "--enable-auto-tool-choice"]).is_err());
    let c = parse(&[
        "--worker-addr",
        "tcp://a:1",
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "glm47",
    ])
    .expect("parses");
    assert!(c.enable_auto_tool_choice);
}

#[test]
fn a_missing_worker_or_unknown_parser_is_rejected() {
    assert!(parse(&[]).is_err());
    assert!(parse(&["--worker-addr", "tcp://a:1", "--tool-call-parser", "hermes"]).is_err());
    assert!(parse(&["--worker-addr", "tcp://a:1", "--worker-timeout", "-1"]).is_err());
    let zero = [
        "--worker-addr",
        "tcp://a:1",
        "--health-generate-timeout",
        "0",
    ];
    assert!(parse(&zero).is_err());
}

#[test]
fn the_balance_policy_defaults_to_prefix() {
    let c = parse(&["--worker-addr", "tcp://a:1"]).expect("parses");
    assert_eq!(c.dispatch_options().balance.policy, BalancePolicy::Prefix);
    let c = parse(&[
        "--worker-addr",
        "tcp://a:1",
        "--balance_policy",
        "least-loaded",
    ])
    .expect("parses");
    assert_eq!(
        c.dispatch_options().balance.policy,
        BalancePolicy::LeastLoaded
    );
    assert!(parse(&["--worker-addr", "tcp://a:1", "--balance-policy", "random"]).is_err());
}

#[test]
fn an_ipv6_host_is_bracketed() {
    let c = parse(&["--worker-addr", "tcp://a:1", "--host", "::", "--port", "9"]).expect("parses");
    assert_eq!(c.listen_addr(), "[::]:9");
    assert_eq!(
        c.dispatch_options().silence_timeout,
        Duration::from_secs(60)
    );
    assert_eq!(c.health_generate_timeout, 20.0);
}
