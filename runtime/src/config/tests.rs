use super::http::env_tokens;
use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    let dir = std::env::temp_dir();
    let plugin = dir.join("weir-config-test.wasm");
    std::fs::write(&plugin, b"\0asm\x01\0\0\0").unwrap();
    Config::parse(&text.replace("PLUGIN", &plugin.display().to_string()), &dir.join("weir.toml"))
}

#[test]
fn defaults_are_applied() {
    let c = parse("[[pipelines]]\nname = \"orders\"\ntopics = [\"orders.>\"]\n[[pipelines.handlers]]\nname = \"v\"\nplugin = \"PLUGIN\"\n").unwrap();
    assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
    assert_eq!(c.retention, Duration::from_secs(86_400));
    assert_eq!(c.max_payload_bytes, 1 << 20);
    assert_eq!(c.pipelines[0].handlers[0].retry, RetryPolicy::default());
    assert!(c.data_dir.ends_with("weir-data"));
}

#[test]
fn errors_name_the_key() {
    let cases = [
        ("[http]\nlisten = \"nowhere\"", "http.listen"),
        ("[idempotency]\nretention = \"forever\"", "idempotency.retention"),
        ("[[pipelines]]\nname = \"Orders\"\ntopics = [\"a.b.c\"]", "pipelines[0].name"),
        ("[[pipelines]]\nname = \"o\"\ntopics = [\"a.b\"]", "pipelines[0].topics[0]"),
        (
            "[[pipelines]]\nname = \"o\"\ntopics = [\"a.b.c\"]\n[[pipelines.handlers]]\nname = \"v\"\nplugin = \"/no/such.wasm\"",
            "pipelines[0].handlers[0].plugin",
        ),
        (
            "[[pipelines]]\nname = \"o\"\ntopics = [\"a.b.c\"]\n[[pipelines.handlers]]\nname = \"v\"\nplugin = \"PLUGIN\"\nretry = { jitter = 3.0 }",
            "pipelines[0].handlers[0].retry.jitter",
        ),
        ("[[pipelines]]\nname = \"o\"\ntopics = [\"a.b.c\"]", "pipelines[0].handlers"),
    ];
    for (text, key) in cases {
        let e = parse(text).unwrap_err();
        assert_eq!(e.key, key, "{text}: {e}");
        assert!(e.to_string().contains("weir.toml"));
    }
    let e = parse("bogus = 1").unwrap_err();
    assert!(e.reason.contains("unknown field"), "{e}");
}

#[test]
fn keep_versions_defaults_to_ten_and_is_at_least_one() {
    assert_eq!(parse("").unwrap().keep_versions, DEFAULT_KEEP_VERSIONS);
    assert_eq!(parse("[plugins]\nkeep_versions = 3").unwrap().keep_versions, 3);
    assert_eq!(parse("[plugins]\nkeep_versions = 0").unwrap_err().key, "plugins.keep_versions");
}

#[test]
fn a_retention_under_the_minimum_is_refused() {
    for text in ["0s", "0ms", "999ms"] {
        let e = parse(&format!("[idempotency]\nretention = \"{text}\"")).unwrap_err();
        assert_eq!(e.key, "idempotency.retention", "{e}");
        assert!(e.to_string().contains("minimum of 1s"), "{e}");
    }
    for (text, secs) in [("1s", 1), ("1m", 60), ("24h", 86_400)] {
        let c = parse(&format!("[idempotency]\nretention = \"{text}\"")).unwrap();
        assert_eq!(c.retention, Duration::from_secs(secs));
    }
}

#[test]
fn a_retention_that_could_overflow_expiry_times_is_refused() {
    // 584 million years of milliseconds overflow a u64; the bound stops
    // far below that.
    for text in ["36501days", "1000000years", "18446744073709551615s"] {
        let e = parse(&format!("[idempotency]\nretention = \"{text}\"")).unwrap_err();
        assert_eq!(e.key, "idempotency.retention", "{e}");
    }
    let c = parse("[idempotency]\nretention = \"36500days\"").unwrap();
    assert_eq!(c.retention, MAX_RETENTION);
}

#[test]
fn a_plugin_path_that_is_a_directory_is_reported_as_one() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[[pipelines]]\nname = \"o\"\ntopics = [\"a.b.c\"]\n[[pipelines.handlers]]\nname = \"v\"\nplugin = {:?}",
        dir.path().display().to_string()
    );
    let e = parse(&text).unwrap_err();
    assert_eq!(e.key, "pipelines[0].handlers[0].plugin", "{e}");
    assert!(e.reason.contains("is a directory"), "{e}");
    assert!(!e.reason.contains("no such file"), "{e}");
}

#[test]
fn tokens_get_their_scopes_and_the_admin_token_gets_every_scope() {
    let c = parse(
        "[http]\nadmin_token = \"adm\"\n[[http.tokens]]\ntoken = \"p\"\nscopes = [\"publish\"]\n[[http.tokens]]\ntoken = \"r\"\nscopes = [\"read\", \"admin\"]",
    )
    .unwrap();
    let tokens: Vec<(&str, &[Scope])> = c.http.tokens.iter().map(|t| (t.token.as_str(), &t.scopes[..])).collect();
    assert_eq!(
        tokens,
        [("adm", &Scope::ALL[..]), ("p", &[Scope::Publish][..]), ("r", &[Scope::Read, Scope::Admin][..])]
    );
    assert!(!format!("{:?}", c.http.tokens).contains("adm\""), "a token's Debug shows its secret");
    for (text, key) in [
        ("[[http.tokens]]\ntoken = \"t\"\nscopes = [\"write\"]", "http.tokens[0].scopes"),
        ("[[http.tokens]]\ntoken = \"t\"\nscopes = []", "http.tokens[0].scopes"),
        ("[[http.tokens]]\ntoken = \"\"\nscopes = [\"read\"]", "http.tokens[0].token"),
        ("[http]\nmax_connections = 0", "http.max_connections"),
        ("[http]\nheader_timeout = \"0s\"", "http.header_timeout"),
        ("[http]\nbody_timeout = \"soon\"", "http.body_timeout"),
    ] {
        assert_eq!(parse(text).unwrap_err().key, key, "{text}");
    }
    let d = parse("").unwrap().http;
    assert_eq!((d.max_body_bytes, d.header_timeout, d.max_connections), (64 << 20, Duration::from_secs(10), 1024));
}

#[test]
fn weir_tokens_entries_name_their_scopes() {
    let tokens = env_tokens("publish:a; read+admin:b:c\n").unwrap();
    assert_eq!(tokens.len(), 2);
    assert_eq!((tokens[0].token.as_str(), &tokens[0].scopes[..]), ("a", &[Scope::Publish][..]));
    assert_eq!((tokens[1].token.as_str(), &tokens[1].scopes[..]), ("b:c", &[Scope::Read, Scope::Admin][..]));
    assert!(env_tokens("nocolon").is_err());
    assert!(env_tokens("write:x").is_err());
    assert!(env_tokens("read:").is_err());
    assert!(env_tokens("").unwrap().is_empty());
}

#[test]
fn backoff_grows_and_caps() {
    let p = RetryPolicy { jitter: 0.0, ..RetryPolicy::default() };
    assert_eq!(p.base_backoff(1), Duration::from_millis(100));
    assert_eq!(p.base_backoff(3), Duration::from_millis(400));
    assert_eq!(p.base_backoff(40), Duration::from_secs(30));
    let j = RetryPolicy::default();
    for _ in 0..100 {
        let b = j.backoff(2).as_secs_f64();
        assert!((0.16..=0.24).contains(&b), "{b}");
    }
}
