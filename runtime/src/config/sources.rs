//! `[[sources]]`: where events come from besides HTTP. One kind so far,
//! `type = "jetstream"`: a durable pull consumer on a NATS JetStream stream
//! (runtime/src/source/). Also the NATS connection settings the JetStream
//! sinks share (`[[jetstream_sinks]]`, config/sinks.rs).

use super::*;

/// Default messages asked for per pull, and most appended per commit.
pub const DEFAULT_SOURCE_BATCH: usize = 256;
/// Largest `batch`.
pub const MAX_SOURCE_BATCH: usize = 4096;
/// Default ack wait of a source's consumer: how long JetStream waits for the
/// ack of a delivered message before it delivers it again.
pub const DEFAULT_SOURCE_ACK_WAIT: Duration = Duration::from_secs(30);
/// The status and DLQ name prefix of a source: `sources/<name>`.
pub const SOURCE_PREFIX: &str = "sources/";

/// How to reach NATS: the server URLs and the credentials, read from the
/// environment (never from the file). Its `Debug` shows no secret.
#[derive(Clone, PartialEq, Eq)]
pub struct NatsConnection {
    /// `nats://host:port` URLs, one or several (a cluster).
    pub urls: Vec<String>,
    /// How to authenticate, if at all.
    pub auth: NatsAuth,
}

/// NATS credentials.
#[derive(Clone, PartialEq, Eq)]
pub enum NatsAuth {
    /// None.
    None,
    /// A token (`token_env`).
    Token(String),
    /// A user and password (`user_env`, `password_env`).
    UserPassword(String, String),
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "NatsAuth::None",
            Self::Token(_) => "NatsAuth::Token(<redacted>)",
            Self::UserPassword(..) => "NatsAuth::UserPassword(<redacted>)",
        })
    }
}

impl std::fmt::Debug for NatsConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let auth = match self.auth {
            NatsAuth::None => "none",
            NatsAuth::Token(_) => "token(<redacted>)",
            NatsAuth::UserPassword(..) => "user/password(<redacted>)",
        };
        f.debug_struct("NatsConnection").field("urls", &self.urls).field("auth", &auth).finish()
    }
}

impl NatsConnection {
    /// The URLs as one comma-separated text, for messages.
    #[must_use]
    pub fn url_text(&self) -> String {
        self.urls.join(",")
    }
}

/// The connection fields of a `[[sources]]` or `[[jetstream_sinks]]` entry.
pub(super) fn connection(
    url: &str,
    token_env: Option<&str>,
    user_env: Option<&str>,
    password_env: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<NatsConnection, (&'static str, String)> {
    let mut urls = Vec::new();
    for part in url.split(',').map(str::trim) {
        let rest = part
            .strip_prefix("nats://")
            .or_else(|| part.strip_prefix("tls://"))
            .ok_or_else(|| ("url", format!("{part:?} is not a nats:// (or tls://) URL")))?;
        if rest.is_empty() || rest.contains('@') || rest.contains('/') {
            return Err((
                "url",
                format!("{part:?}: give host:port only; credentials come from token_env or user_env/password_env"),
            ));
        }
        urls.push(part.to_owned());
    }
    let read = |field: &'static str, name: &str| -> Result<String, (&'static str, String)> {
        match env(name) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err((field, format!("environment variable {name} is not set"))),
        }
    };
    let auth = match (token_env, user_env, password_env) {
        (None, None, None) => NatsAuth::None,
        (Some(token), None, None) => NatsAuth::Token(read("token_env", token)?),
        (None, Some(user), Some(password)) => {
            NatsAuth::UserPassword(read("user_env", user)?, read("password_env", password)?)
        }
        (Some(_), _, _) => return Err(("token_env", "give token_env or user_env/password_env, not both".into())),
        _ => return Err(("user_env", "user_env and password_env go together".into())),
    };
    Ok(NatsConnection { urls, auth })
}

/// What a topic is made of, from a message's subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicTemplate {
    /// The last three tokens of the subject (the default).
    LastThree,
    /// Literal text and 1-based subject tokens, e.g. `orders.order.{3}`.
    Parts(Vec<TemplatePart>),
}

/// A piece of a [`TopicTemplate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    /// Text as written.
    Text(String),
    /// The subject's token at this 1-based position.
    Token(usize),
}

impl TopicTemplate {
    /// Parse `orders.order.{3}`: `{N}` is the subject's N-th token.
    ///
    /// # Errors
    ///
    /// An unclosed brace or a placeholder that is not a positive number.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(TemplatePart::Text(rest[..open].to_owned()));
            }
            let close = rest[open..].find('}').ok_or_else(|| format!("{text:?}: unclosed '{{'"))? + open;
            let n: usize =
                rest[open + 1..close].parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    format!("{text:?}: {{{}}} is not a token number (1, 2, …)", &rest[open + 1..close])
                })?;
            parts.push(TemplatePart::Token(n));
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(TemplatePart::Text(rest.to_owned()));
        }
        Ok(Self::Parts(parts))
    }

    /// The topic for `subject`, or why there is none (a token it names is
    /// missing). The result is validated as a topic by the caller.
    ///
    /// # Errors
    ///
    /// The subject has fewer tokens than the template needs.
    pub fn apply(&self, subject: &str) -> Result<String, String> {
        let tokens: Vec<&str> = subject.split('.').collect();
        match self {
            Self::LastThree => {
                if tokens.len() < 3 {
                    return Err(format!("subject {subject:?} has fewer than three tokens"));
                }
                Ok(tokens[tokens.len() - 3..].join("."))
            }
            Self::Parts(parts) => {
                let mut out = String::new();
                for part in parts {
                    match part {
                        TemplatePart::Text(t) => out.push_str(t),
                        TemplatePart::Token(n) => out.push_str(
                            tokens.get(n - 1).ok_or_else(|| format!("subject {subject:?} has no token {n}"))?,
                        ),
                    }
                }
                Ok(out)
            }
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    url: String,
    stream: String,
    #[serde(default)]
    subjects: Vec<String>,
    durable: Option<String>,
    token_env: Option<String>,
    user_env: Option<String>,
    password_env: Option<String>,
    topic: Option<String>,
    key_token: Option<usize>,
    source: Option<String>,
    content_type: Option<String>,
    batch: Option<usize>,
    ack_wait: Option<String>,
}

/// One `[[sources]]` entry of `type = "jetstream"`, validated.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Source name; status shows it as `sources/<name>`.
    pub name: String,
    /// Where NATS is.
    pub connection: NatsConnection,
    /// The stream consumed. It must exist: Weir does not create it.
    pub stream: String,
    /// Subject filters of the consumer; empty: the whole stream.
    pub subjects: Vec<String>,
    /// The durable consumer's name (created when missing). Default
    /// `weir-<name>`.
    pub durable: String,
    /// How a message's subject becomes its topic when no header says.
    pub topic: TopicTemplate,
    /// The subject token (1-based) that is the key when no header says.
    pub key_token: Option<usize>,
    /// The events' `source` when the message has no CloudEvents source.
    /// Default `nats:<stream>`.
    pub source: String,
    /// The payload's content type when the message has no `Content-Type`
    /// header. Default `application/json`.
    pub content_type: String,
    /// Messages per pull and per commit.
    pub batch: usize,
    /// The consumer's ack wait (set when Weir creates the consumer).
    pub ack_wait: Duration,
}

/// Validate `[[sources]]`; `retention` is `idempotency.retention`, which
/// must outlast a source's ack wait (redeliveries are recognised within it).
pub(super) fn sources(
    raw: Vec<RawSource>,
    retention: Duration,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<SourceConfig>, (String, String)> {
    let mut out: Vec<SourceConfig> = Vec::with_capacity(raw.len());
    for (i, rs) in raw.into_iter().enumerate() {
        let key = format!("sources[{i}]");
        let at = |field: &str| format!("{key}.{field}");
        check_name(&rs.name).map_err(|e| (at("name"), e))?;
        if out.iter().any(|s| s.name == rs.name) {
            return Err((at("name"), format!("source {:?} is defined twice", rs.name)));
        }
        if rs.kind != "jetstream" {
            return Err((at("type"), format!("{:?} is not a source type; the one there is is \"jetstream\"", rs.kind)));
        }
        let connection =
            connection(&rs.url, rs.token_env.as_deref(), rs.user_env.as_deref(), rs.password_env.as_deref(), env)
                .map_err(|(field, e)| (at(field), e))?;
        let nats_name = |text: &str| {
            !text.is_empty() && text.chars().all(|c| !c.is_whitespace() && !c.is_control() && !".*>".contains(c))
        };
        if !nats_name(&rs.stream) {
            return Err((at("stream"), format!("{:?} is not a JetStream stream name", rs.stream)));
        }
        for (s, subject) in rs.subjects.iter().enumerate() {
            if subject.is_empty() || subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err((format!("{key}.subjects[{s}]"), format!("{subject:?} is not a subject filter")));
            }
        }
        let durable = rs.durable.clone().unwrap_or_else(|| format!("weir-{}", rs.name));
        if !nats_name(&durable) {
            return Err((at("durable"), format!("{durable:?} is not a consumer name")));
        }
        let topic = match &rs.topic {
            Some(text) => TopicTemplate::parse(text).map_err(|e| (at("topic"), e))?,
            None => TopicTemplate::LastThree,
        };
        if rs.key_token == Some(0) {
            return Err((at("key_token"), "tokens count from 1".into()));
        }
        let batch = rs.batch.unwrap_or(DEFAULT_SOURCE_BATCH);
        if batch == 0 || batch > MAX_SOURCE_BATCH {
            return Err((at("batch"), format!("{batch} is outside 1..={MAX_SOURCE_BATCH}")));
        }
        let ack_wait = match &rs.ack_wait {
            Some(text) => duration(text).map_err(|e| (at("ack_wait"), e))?,
            None => DEFAULT_SOURCE_ACK_WAIT,
        };
        if ack_wait < Duration::from_secs(1) || ack_wait >= retention {
            return Err((
                at("ack_wait"),
                format!(
                    "{ack_wait:?} must be at least 1s and shorter than idempotency.retention ({retention:?}): redeliveries are recognised within the retention"
                ),
            ));
        }
        out.push(SourceConfig {
            source: rs.source.unwrap_or_else(|| format!("nats:{}", rs.stream)),
            content_type: rs.content_type.unwrap_or_else(|| "application/json".to_owned()),
            name: rs.name,
            connection,
            stream: rs.stream,
            subjects: rs.subjects,
            durable,
            topic,
            key_token: rs.key_token,
            batch,
            ack_wait,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Vec<SourceConfig>, (String, String)> {
        #[derive(Deserialize)]
        struct Doc {
            sources: Vec<RawSource>,
        }
        let doc: Doc = toml::from_str(text).map_err(|e| (String::new(), e.to_string()))?;
        sources(doc.sources, Duration::from_secs(3600), env)
    }

    #[test]
    fn a_source_reads_credentials_from_the_environment_and_never_shows_them() {
        let text = r#"
            [[sources]]
            name = "orders"
            type = "jetstream"
            url = "nats://127.0.0.1:4222, nats://127.0.0.1:4223"
            stream = "ORDERS"
            subjects = ["orders.>"]
            token_env = "NATS_TOKEN"
            key_token = 2
            ack_wait = "5s"
        "#;
        let env = |name: &str| (name == "NATS_TOKEN").then(|| "s3cret".to_owned());
        let s = parse(text, &env).unwrap().remove(0);
        assert_eq!(s.connection.urls.len(), 2);
        assert_eq!((s.durable.as_str(), s.source.as_str(), s.batch), ("weir-orders", "nats:ORDERS", 256));
        assert_eq!(s.connection.auth, NatsAuth::Token("s3cret".into()));
        assert!(!format!("{s:?}").contains("s3cret"));
        let (key, reason) = parse(text, &|_| None).unwrap_err();
        assert_eq!(key, "sources[0].token_env");
        assert!(reason.contains("NATS_TOKEN is not set"), "{reason}");
        let (key, _) = parse(&text.replace("5s", "2h"), &env).unwrap_err();
        assert_eq!(key, "sources[0].ack_wait");
        let (key, _) = parse(&text.replace("\"jetstream\"", "\"kafka\""), &env).unwrap_err();
        assert_eq!(key, "sources[0].type");
        let (key, _) = parse(&text.replace("nats://127.0.0.1:4223", "http://x"), &env).unwrap_err();
        assert_eq!(key, "sources[0].url");
    }

    #[test]
    fn topics_come_from_the_subject() {
        assert_eq!(TopicTemplate::LastThree.apply("acme.orders.order.created").unwrap(), "orders.order.created");
        assert!(TopicTemplate::LastThree.apply("orders.created").is_err());
        let t = TopicTemplate::parse("orders.order.{3}").unwrap();
        assert_eq!(t.apply("in.orders.created").unwrap(), "orders.order.created");
        assert!(t.apply("in.orders").is_err());
        assert!(TopicTemplate::parse("a.b.{x}").is_err());
        assert!(TopicTemplate::parse("a.b.{0}").is_err());
        assert!(TopicTemplate::parse("a.b.{1").is_err());
    }
}
