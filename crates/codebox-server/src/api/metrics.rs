//! `GET /v1/sessions/{id}/metrics`: a session's latest live metrics sample, or its series.

use std::sync::Arc;

use codebox_core::CodeBoxError;
use codebox_http::server::{Body, json_response};
use codebox_http::wire::MetricsSeries;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use crate::auth::Owner;
use crate::sampler::{has_stopped, measure};
use crate::state::{ApiResult, AppState};

/// `GET /v1/sessions/{id}/metrics[?since=<unix ms>]`: without `since`, the newest sample
/// (measured now when the sampler has none yet; marked final once the box has stopped);
/// with it, the samples newer than that moment, oldest first.
pub(super) async fn metrics(
    state: &Arc<AppState>,
    owner: Owner,
    id: &str,
    req: &Request<Incoming>,
) -> ApiResult<Response<Body>> {
    let since = parse_since(req.uri().query())?;
    // Not touched: watching a session's metrics is not using it, and must not keep an
    // abandoned session from its idle timeout.
    let session = state.registry.require(owner, id)?;
    if !session.codebox.capabilities().metrics {
        return Err(CodeBoxError::unsupported("metrics (this session's box does not measure itself)").into());
    }
    let rings = &state.metrics_rings;
    if let Some(since) = since {
        if rings.latest(&session).is_none() {
            // A series starts with a sample: a caller asking at once gets the one taken now.
            let _ = measure(rings, &session).await;
        }
        return Ok(json_response(StatusCode::OK, &MetricsSeries { samples: rings.since(&session, since) }));
    }
    let sample = match rings.latest(&session) {
        Some(latest) if latest.final_sample => latest,
        Some(latest) if has_stopped(&session).await => {
            // Stopped since the sampler last looked: what it saw last is the last there is.
            let _ = measure(rings, &session).await;
            rings.latest(&session).unwrap_or_else(|| latest.into_final())
        }
        Some(latest) => latest,
        None => measure(rings, &session).await?,
    };
    Ok(json_response(StatusCode::OK, &sample))
}

/// The `since` of a metrics query, in Unix milliseconds; anything else is refused.
fn parse_since(query: Option<&str>) -> Result<Option<u64>, CodeBoxError> {
    let mut since = None;
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("since", v) => {
                let ms = v
                    .parse::<u64>()
                    .map_err(|_| CodeBoxError::invalid(format!("since={v:?}: expected a time in Unix milliseconds")))?;
                since = Some(ms);
            }
            (other, _) => return Err(CodeBoxError::invalid(format!("unknown query parameter {other:?}"))),
        }
    }
    Ok(since)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_unix_milliseconds_or_refused() {
        assert_eq!(parse_since(None).unwrap(), None);
        assert_eq!(parse_since(Some("since=0")).unwrap(), Some(0));
        assert_eq!(parse_since(Some("since=1764460800000")).unwrap(), Some(1_764_460_800_000));
        for bad in ["since=", "since=-1", "since=yesterday", "since=1.5", "limit=3", "since=1&x=2"] {
            assert!(parse_since(Some(bad)).is_err(), "{bad}");
        }
    }
}
