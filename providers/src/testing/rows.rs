//! The error and hostile rows: each scripts one answer on a fake upstream, makes one call
//! with a fresh provider, and checks the error (or result) it gets.

use std::time::{Duration, Instant};

use imagegen_testkit::{FakeUpstream, Reply};

use super::stub::{ConformanceStub, Fault, StubTarget};
use crate::{
    ErrorKind, GenerateRequest, GenerateResult, ImageProvider, ImageProviderExt, ProviderError,
};

/// The sentinel key every row's provider is built with; it must never show.
pub const SENTINEL_KEY: &str = "sk-SENTINEL-hostile-0123456789abcdef";
/// The sentinel password of the fake upstream's base URL; it must never show either.
pub const SENTINEL_PASSWORD: &str = "SENTINELPASS";

/// The rows' cap on `Retry-After` waits.
const CAP: Duration = Duration::from_millis(250);
/// The rows' per-request timeout.
const TIMEOUT: Duration = Duration::from_millis(500);

/// Builds a fresh provider (and key pool) for one row.
pub type Build<'a> = &'a dyn Fn(StubTarget) -> Box<dyn ImageProvider>;

/// Asserts that no secret of the rows shows in `text`.
pub fn assert_no_sentinel(text: &str, what: &str) {
    for secret in [SENTINEL_KEY, SENTINEL_PASSWORD, "SENTINEL", "0123456789abc"] {
        assert!(!text.contains(secret), "{what}: `{secret}` leaked: {text}");
    }
}

/// The fake upstream of a run of rows, and how to build a provider against it.
struct Rows<'a> {
    fake: FakeUpstream,
    base_url: url::Url,
    build: Build<'a>,
    stub: &'a dyn ConformanceStub,
}

impl<'a> Rows<'a> {
    async fn start(build: Build<'a>, stub: &'a dyn ConformanceStub) -> Self {
        let fake = FakeUpstream::start(vec![]).await;
        let base_url = format!(
            "http://user:{SENTINEL_PASSWORD}@127.0.0.1:{}/v1",
            fake.addr().port()
        )
        .parse()
        .expect("a valid base URL");
        Self {
            fake,
            base_url,
            build,
            stub,
        }
    }

    fn fresh(&self) -> Box<dyn ImageProvider> {
        (self.build)(StubTarget {
            base_url: self.base_url.clone(),
            key: SENTINEL_KEY,
            retry_after_cap: CAP,
            timeout: TIMEOUT,
        })
    }

    fn request(&self) -> GenerateRequest {
        GenerateRequest::new("conformance: a red circle", self.stub.model())
    }

    /// Answers the next request with `first` and every later one with one image, then makes
    /// `request` with a fresh provider; returns the provider, the outcome and how long it took.
    async fn call(
        &self,
        first: Reply,
        request: &GenerateRequest,
    ) -> (
        Box<dyn ImageProvider>,
        Result<GenerateResult, ProviderError>,
        Duration,
    ) {
        self.fake.script(vec![first, self.stub.answer_ok(1)]);
        let provider = self.fresh();
        let started = Instant::now();
        let outcome = provider.generate(request).await;
        (provider, outcome, started.elapsed())
    }
}

/// The key's echo the error answers carry.
fn echo() -> String {
    format!("Incorrect API key provided: {SENTINEL_KEY}; Authorization: Bearer {SENTINEL_KEY}")
}

/// What an error row expects.
struct Expect {
    what: &'static str,
    kind: ErrorKind,
    status: Option<u16>,
    retry_after: Option<Duration>,
}

/// The error rows every HTTP provider must map the same way: kind, status and `retry_after`
/// as listed, no secret in the error, and one upstream request per call (the providers are
/// built by `build`, which must turn retries off: `max_retries = 0`).
pub async fn error_rows(build: Build<'_>, stub: &dyn ConformanceStub) {
    let rows = Rows::start(build, stub).await;
    let kind = rows.fresh().kind().to_string();
    let echo = echo();
    let message = Fault::Field {
        field: "message",
        value: &echo,
    };
    let mut table: Vec<(Reply, Expect)> = vec![
        (
            stub.answer_error(401, message),
            Expect {
                what: "401",
                kind: ErrorKind::Auth,
                status: Some(401),
                retry_after: None,
            },
        ),
        (
            stub.answer_error(403, message),
            Expect {
                what: "403",
                kind: ErrorKind::Permission,
                status: Some(403),
                retry_after: None,
            },
        ),
        (
            // Within the cap: waited out by a caller with retries, reported here.
            stub.answer_error(429, message).header("retry-after", "1"),
            Expect {
                what: "429 with Retry-After",
                kind: ErrorKind::RateLimited,
                status: Some(429),
                retry_after: Some(Duration::from_secs(1)),
            },
        ),
        (
            stub.answer_error(500, message),
            Expect {
                what: "500",
                kind: ErrorKind::UpstreamUnavailable,
                status: Some(500),
                retry_after: None,
            },
        ),
        (
            stub.answer_error(503, message),
            Expect {
                what: "503",
                kind: ErrorKind::UpstreamUnavailable,
                status: Some(503),
                retry_after: None,
            },
        ),
        (
            stub.answer_error(400, Fault::Refusal),
            Expect {
                what: "content-policy refusal",
                kind: ErrorKind::ContentPolicy,
                status: Some(400),
                retry_after: None,
            },
        ),
        (
            Reply::bytes(
                200,
                "application/json",
                format!("{{\"data\": [{{\"b64_json\": \"{SENTINEL_KEY}"),
            ),
            Expect {
                what: "malformed body",
                kind: ErrorKind::BadResponse,
                status: None,
                retry_after: None,
            },
        ),
        (
            stub.answer_ok(1).delay(TIMEOUT * 4),
            Expect {
                what: "timeout after the request was sent",
                kind: ErrorKind::Timeout,
                status: None,
                retry_after: None,
            },
        ),
    ];
    let mut request = rows.request();
    if let Some(broken) = stub.answer_broken_stream() {
        request.options.partial_images = Some(1);
        table.push((
            broken,
            Expect {
                what: "broken stream",
                kind: ErrorKind::Network,
                status: None,
                retry_after: None,
            },
        ));
    }
    for (reply, expect) in table {
        let what = format!("{kind}: {}", expect.what);
        let asked = if expect.what == "broken stream" {
            request.clone()
        } else {
            rows.request()
        };
        let before = rows.fake.count();
        let (_, outcome, _) = rows.call(reply, &asked).await;
        let err = match outcome {
            Ok(_) => panic!("{what}: succeeded"),
            Err(e) => e,
        };
        assert_no_sentinel(&format!("{err} {err:?}"), &what);
        assert_eq!(err.kind, expect.kind, "{what}: {err}");
        assert_eq!(err.status, expect.status, "{what}: {err}");
        assert_eq!(err.retry_after, expect.retry_after, "{what}: {err}");
        assert_eq!(rows.fake.count() - before, 1, "{what}: one request");
    }
}

/// What every HTTP provider must withstand from an upstream that echoes secrets, asks for
/// absurd waits, sends more than asked for or points elsewhere: no secret in any error or
/// result, no panic, a prompt answer, and no key locked out beyond its `retry_after_cap`.
pub async fn hostile_rows(build: Build<'_>, stub: &dyn ConformanceStub) {
    let rows = Rows::start(build, stub).await;
    let kind = rows.fresh().kind().to_string();
    let request = rows.request();
    // Key echoes: every error field, every status that rests or disables a key, the request
    // id, a 200 of the wrong shape, and a text body where the key straddles the 200-character cut.
    let echo = echo();
    let mut table: Vec<(String, Reply)> = Vec::new();
    for status in [400, 401, 429, 500] {
        for field in ["message", "code", "type", "param"] {
            table.push((
                format!("{status} {field}"),
                stub.answer_error(
                    status,
                    Fault::Field {
                        field,
                        value: &echo,
                    },
                ),
            ));
        }
    }
    table.push((
        "x-request-id".into(),
        stub.answer_error(
            400,
            Fault::Field {
                field: "message",
                value: "no",
            },
        )
        .header("x-request-id", SENTINEL_KEY),
    ));
    table.push((
        "200 of the wrong shape".into(),
        Reply::bytes(
            200,
            "application/json",
            format!(r#"{{"data": "Authorization: Bearer {SENTINEL_KEY}"}}"#),
        ),
    ));
    let from = format!("from {}", rows.base_url);
    table.push((
        "base URL password".into(),
        stub.answer_error(
            400,
            Fault::Field {
                field: "message",
                value: &from,
            },
        ),
    ));
    for pad in [186, 190, 195, 199] {
        table.push((
            format!("text body, key at {pad}"),
            Reply::bytes(
                502,
                "text/plain",
                format!("{}{SENTINEL_KEY} tail", "e".repeat(pad)),
            ),
        ));
    }
    for (what, reply) in table {
        let what = format!("{kind}: {what}");
        let (provider, first, _) = rows.call(reply, &request).await;
        let err = first.expect_err(&what);
        assert_no_sentinel(&format!("{err} {err:?}"), &what);
        // Whatever the row did to the key, it is usable again within the cap.
        let started = Instant::now();
        if let Ok(result) = provider.generate(&request).await {
            assert_no_sentinel(
                &format!("{:?} {:?}", result.revised_prompt, result.request_id),
                &what,
            );
        }
        assert!(started.elapsed() < CAP * 3, "{what}: the next call hung");
    }

    // Absurd waits: answered at once, and the next call waits out no more than the cap.
    for (header, value) in [
        ("retry-after", "300000000000"),
        ("retry-after", "9223372036854775807"),
        ("retry-after-ms", "18446744073709551615"),
        ("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT"),
    ] {
        let what = format!("{kind}: {header}: {value}");
        let reply = stub
            .answer_error(
                429,
                Fault::Field {
                    field: "message",
                    value: "slow down",
                },
            )
            .header(header, value);
        let (provider, first, took) = rows.call(reply, &request).await;
        let err = first.expect_err(&what);
        assert_eq!(err.kind, ErrorKind::RateLimited, "{what}: {err}");
        assert!(took < CAP * 3, "{what}: took {took:?}");
        let started = Instant::now();
        provider
            .generate(&request)
            .await
            .unwrap_or_else(|e| panic!("{what}: the next call failed: {e}"));
        assert!(started.elapsed() < CAP * 3, "{what}: locked out");
    }

    // More images than asked for: refused, or never more than asked.
    for (asked, sent) in [(1, 50), (2, 3)] {
        let what = format!("{kind}: {sent} images for {asked}");
        let mut more = request.clone();
        more.options.n = Some(asked);
        match rows.call(stub.answer_ok(sent), &more).await.1 {
            Ok(result) => assert!(result.images.len() <= asked as usize, "{what}"),
            Err(e) => {
                assert_eq!(e.kind, ErrorKind::BadResponse, "{what}: {e}");
                assert_no_sentinel(&format!("{e} {e:?}"), &what);
            }
        }
    }

    // Result URLs on another host (another port of the same one counts): never fetched.
    let elsewhere =
        FakeUpstream::start(vec![Reply::bytes(200, "text/plain", "SECRET-ADMIN-PAGE")]).await;
    let urls = vec![elsewhere.url("/admin.png")];
    if let Some(reply) = stub.answer_urls(&urls) {
        let what = format!("{kind}: a result URL elsewhere");
        let err = rows.call(reply, &request).await.1.expect_err(&what);
        assert_eq!(err.kind, ErrorKind::BadResponse, "{what}: {err}");
        assert!(!err.message.contains("SECRET-ADMIN"), "{what}: {err}");
        assert_eq!(elsewhere.count(), 0, "{what}: the other host was reached");
    }
}
