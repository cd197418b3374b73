//! Logging: built once. `RUST_LOG` filters; `FLASHGATE_LOG_FORMAT=json` for
//! machine-readable lines. Lines go to stdout, in colour only when stdout
//! is a terminal (and `NO_COLOR` is unset): a log file or a pipe gets plain
//! text, `<timestamp> <LEVEL> <message>`, that `grep` can read.

use std::io::IsTerminal;

use tracing_subscriber::{fmt, EnvFilter};

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("FLASHGATE_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let ansi = colour(
        json,
        std::io::stdout().is_terminal(),
        std::env::var_os("NO_COLOR"),
    );
    let builder = fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi);
    // try_init: tests may initialise more than once.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Colour for text lines on a terminal, unless `NO_COLOR` is set to
/// something (<https://no-color.org>); never in a file, a pipe or JSON.
fn colour(json: bool, terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    !json && terminal && no_color.is_none_or(|v| v.is_empty())
}

/// The root span of every request: route, method, client, request id, and
/// the status code at the end. Unlike the default builder it formats no
/// error per 4xx (a flash sale answers mostly 409 `sold_out`); 5xx are
/// logged with their cause where the error is mapped (`error.rs`).
pub struct RootSpan;

impl tracing_actix_web::RootSpanBuilder for RootSpan {
    fn on_request_start(request: &actix_web::dev::ServiceRequest) -> tracing::Span {
        // Not `root_span!`: it re-runs the router's regexes to find the
        // route; the metrics middleware records `http.route` instead.
        use actix_web::HttpMessage;
        let request_id = request
            .extensions()
            .get::<tracing_actix_web::RequestId>()
            .copied();
        tracing::info_span!(
            "HTTP request",
            http.method = %request.method(),
            http.route = tracing::field::Empty,
            http.target = %request.path(),
            http.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            request_id = %request_id.map(|id| id.to_string()).unwrap_or_default(),
        )
    }

    fn on_request_end<B: actix_web::body::MessageBody>(
        span: tracing::Span,
        outcome: &Result<actix_web::dev::ServiceResponse<B>, actix_web::Error>,
    ) {
        let status = match outcome {
            Ok(response) => response.status(),
            Err(error) => error.as_response_error().status_code(),
        };
        span.record("http.status_code", i32::from(status.as_u16()));
        span.record(
            "otel.status_code",
            if status.is_server_error() {
                "ERROR"
            } else {
                "OK"
            },
        );
    }
}

/// Walks an error's `source()` chain into one line for the logs.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::colour;

    #[test]
    fn colour_follows_the_terminal() {
        assert!(colour(false, true, None));
        assert!(colour(false, true, Some("".into())));
        assert!(!colour(false, false, None), "a file or a pipe");
        assert!(!colour(true, true, None), "JSON lines");
        assert!(!colour(false, true, Some("1".into())), "NO_COLOR");
    }
}
