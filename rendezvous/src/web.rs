//! The live web view and its JSON API (`thunkmesh rendezvous --http ADDR`, `thunkmesh run --ui`),
//! served over plain HTTP/1.1 by axum on a TCP listener beside the QUIC endpoint.
//!
//! Every path answers only a request that carries the mesh's token or the view token (any other
//! is refused with 401 and its connection closed): as
//! `Authorization: Bearer TOKEN`, or the cookie that opening `/?token=TOKEN` once sets (the page
//! then drops the token from its address). The page and its script are embedded in the binary;
//! nothing is fetched from elsewhere. Handlers ask the core through the driver's query channel
//! and never hold its state. Admission is bounded as the QUIC side is: at most
//! [`MAX_CONNECTIONS`] connections at once (more are closed at once), a request's head at most
//! [`MAX_HEAD_BYTES`] and read within [`HEAD_TIMEOUT`], no request body read at all.
//!
//! - `GET /api/status`: what `thunkmesh status --json` prints ([`status_json`]).
//! - `GET /api/journal?since=N`: the tasks that started and ended after entry `N`
//!   (`{"last": M, "entries": [...]}`, see [`crate::journal::What`]).
//! - `GET /api/events`: server-sent events: `status` (the above) and `journal` (new entries),
//!   every [`EVENT_EVERY`] while something changed.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query as UrlQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::Stream;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use thunkmesh_protocol::wire::{JobStatus, MeshStatus};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tracing::{debug, info};

use crate::driver::Query;
use crate::journal::Entry;

/// Connections served at once; one more is closed as soon as it is accepted.
pub const MAX_CONNECTIONS: usize = 64;
/// The most a request's line and headers may take.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// How long a connection has to send a request's head, and may stay idle between requests.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the event stream looks for news.
pub const EVENT_EVERY: Duration = Duration::from_millis(250);
/// Journal entries one answer carries at most.
const ENTRIES_PER_ANSWER: usize = 2_000;
/// The cookie that carries the token after `/?token=`.
const COOKIE: &str = "thunkmesh_view";

const PAGE: &str = include_str!("web/index.html");
const SCRIPT: &str = include_str!("web/view.js");
const STYLE: &str = include_str!("web/view.css");

/// Who may look: the mesh token, and a view token if one is set.
#[derive(Debug, Clone)]
struct Shared {
    tokens: Arc<[String]>,
    queries: mpsc::Sender<Query>,
}

/// Serves the view on `listener` until dropped; `tokens` are the tokens it accepts.
pub(crate) async fn serve(listener: TcpListener, tokens: Vec<String>, queries: mpsc::Sender<Query>) {
    let shared = Shared { tokens: tokens.into(), queries };
    let app = router(shared);
    let admitted = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    info!(addr = ?listener.local_addr().ok(), "web view listening");
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors, most likely: wait rather than spin.
                        debug!(error = %e, "cannot accept a web connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(place) = admitted.clone().try_acquire_owned() else {
                    debug!(%peer, "too many web connections: closing one");
                    continue;
                };
                let service = TowerToHyperService::new(app.clone());
                let mut http = hyper::server::conn::http1::Builder::new();
                http.max_buf_size(MAX_HEAD_BYTES).header_read_timeout(HEAD_TIMEOUT).timer(hyper_util::rt::TokioTimer::new());
                connections.spawn(async move {
                    if let Err(e) = http.serve_connection(TokioIo::new(stream), service).await {
                        debug!(%peer, error = %e, "web connection ended");
                    }
                    drop(place);
                });
            }
            Some(_) = connections.join_next() => {}
        }
    }
}

fn router(shared: Shared) -> Router {
    let guarded = Router::new()
        .route("/api/status", get(status))
        .route("/api/journal", get(journal))
        .route("/api/events", get(events))
        .route("/view.js", get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], SCRIPT) }))
        .route("/view.css", get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE) }))
        .route_layer(middleware::from_fn_with_state(shared.clone(), admit));
    Router::new().route("/", get(page)).merge(guarded).with_state(shared)
}

/// The token a request carries, as a bearer token or in the view's cookie.
fn carried(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()?.strip_prefix("Bearer "));
    let cookie = || {
        let cookies = headers.get_all(header::COOKIE).into_iter().filter_map(|v| v.to_str().ok());
        cookies.flat_map(|c| c.split(';')).find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
    };
    bearer.or_else(cookie)
}

impl Shared {
    fn allows(&self, token: Option<&str>) -> bool {
        token.is_some_and(|t| self.tokens.iter().any(|ours| thunkmesh_net::same_token(t, ours)))
    }
}

fn refused() -> Response {
    let why = "this rendezvous' view needs its token: open the address it printed (`/?token=...`), or send \
               `Authorization: Bearer TOKEN`\n";
    // Closed after the answer: a stranger keeps no connection of the view's budget open.
    let headers = [(header::WWW_AUTHENTICATE, "Bearer"), (header::CONNECTION, "close")];
    (StatusCode::UNAUTHORIZED, headers, why).into_response()
}

async fn admit(State(shared): State<Shared>, request: Request, next: Next) -> Response {
    if !shared.allows(carried(request.headers())) {
        return refused();
    }
    next.run(request).await
}

#[derive(Debug, Deserialize)]
struct PageQuery {
    token: Option<String>,
}

/// The page; `?token=` sets the cookie and sends the browser to the address without it.
async fn page(State(shared): State<Shared>, headers: HeaderMap, UrlQuery(q): UrlQuery<PageQuery>) -> Response {
    if let Some(token) = q.token {
        if !shared.allows(Some(&token)) {
            return refused();
        }
        let cookie = format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/");
        let Ok(cookie) = HeaderValue::from_str(&cookie) else { return refused() };
        return ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response();
    }
    if !shared.allows(carried(&headers)) {
        return refused();
    }
    Html(PAGE).into_response()
}

async fn ask<T>(shared: &Shared, query: impl FnOnce(oneshot::Sender<T>) -> Query) -> Result<T, StatusCode> {
    let (reply, answer) = oneshot::channel();
    shared.queries.send(query(reply)).await.map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    answer.await.map_err(|_| StatusCode::SERVICE_UNAVAILABLE)
}

async fn status(State(shared): State<Shared>) -> Result<Json<serde_json::Value>, StatusCode> {
    Ok(Json(status_json(&ask(&shared, Query::Status).await?)))
}

#[derive(Debug, Deserialize)]
struct JournalQuery {
    since: Option<u64>,
}

async fn journal(
    State(shared): State<Shared>,
    UrlQuery(q): UrlQuery<JournalQuery>,
) -> Result<Json<serde_json::Value>, StatusCode> {
    let since = q.since.unwrap_or(0);
    let (entries, last) = ask(&shared, |reply| Query::Journal { since, max: ENTRIES_PER_ANSWER, reply }).await?;
    Ok(Json(journal_json(&entries, last)))
}

fn journal_json(entries: &[Entry], last: u64) -> serde_json::Value {
    serde_json::json!({ "last": last, "entries": entries })
}

/// The event stream: the status when it changed, and the journal's new entries (from after the
/// `Last-Event-ID` a reconnecting browser sends).
async fn events(
    State(shared): State<Shared>,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let seen = headers.get("last-event-id").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(0);
    struct Watch {
        shared: Shared,
        seen: u64,
        status: Option<serde_json::Value>,
        pending: Vec<SseEvent>,
    }
    let start = Watch { shared, seen, status: None, pending: Vec::new() };
    let stream = futures_util::stream::unfold(start, |mut w| async move {
        loop {
            if let Some(event) = w.pending.pop() {
                return Some((Ok(event), w));
            }
            if w.status.is_some() {
                tokio::time::sleep(EVENT_EVERY).await;
            }
            let since = w.seen;
            let asked = ask(&w.shared, |reply| Query::Journal { since, max: ENTRIES_PER_ANSWER, reply });
            let (Ok(status), Ok((entries, last))) = (ask(&w.shared, Query::Status).await, asked.await) else {
                return None;
            };
            let status = status_json(&status);
            if !entries.is_empty() {
                w.seen = entries.last().map_or(last, |e| e.seq);
                let event = SseEvent::default().event("journal").id(w.seen.to_string());
                w.pending.push(event.data(journal_json(&entries, last).to_string()));
            }
            if w.status.as_ref() != Some(&status) {
                w.pending.push(SseEvent::default().event("status").data(status.to_string()));
                w.status = Some(status);
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// What `thunkmesh status --json` prints and `/api/status` answers; its layout is documented in
/// docs/operations.md.
pub fn status_json(status: &MeshStatus) -> serde_json::Value {
    let nodes: Vec<_> = status
        .nodes
        .iter()
        .map(|n| {
            serde_json::json!({
                "name": n.name, "observed": n.observed, "local": n.local, "nat": n.nat.to_string(),
                "slots": n.slots, "running": n.running, "sandbox": n.isolation,
                "fingerprint": hex::encode(n.fingerprint), "cached_objects": n.held, "cached_bytes": n.held_bytes,
                "connected_ms": n.connected_ms,
            })
        })
        .collect();
    let jobs: Vec<_> = status
        .jobs
        .iter()
        .map(|j| {
            let p = j.progress;
            serde_json::json!({
                "session": j.session, "mode": j.mode.name(), "thunks_total": p.total,
                "thunks_done": p.done, "thunks_running": p.running, "thunks_queued": p.ready,
                "running_ms": j.running_ms, "thunks_per_second": throughput(j),
            })
        })
        .collect();
    serde_json::json!({ "schema_version": 1, "uptime_ms": status.uptime_ms, "nodes": nodes, "jobs": jobs })
}

/// Thunks a job resolved per second so far.
pub fn throughput(job: &JobStatus) -> f64 {
    if job.running_ms == 0 { 0.0 } else { job.progress.done as f64 * 1000.0 / job.running_ms as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (k.clone(), HeaderValue::from_str(v).expect("a header value"))).collect()
    }

    #[test]
    fn the_token_is_read_from_a_bearer_header_or_the_views_cookie_and_nothing_else() {
        let (queries, _) = mpsc::channel(1);
        let shared = Shared { tokens: vec!["mesh".to_owned(), "view".to_owned()].into(), queries };
        let bearer = headers(&[(header::AUTHORIZATION, "Bearer view")]);
        assert_eq!(carried(&bearer), Some("view"));
        let cookie = headers(&[(header::COOKIE, "a=b; thunkmesh_view=mesh; c=d")]);
        assert_eq!(carried(&cookie), Some("mesh"));
        assert!(shared.allows(carried(&bearer)) && shared.allows(carried(&cookie)));
        for wrong in [
            headers(&[(header::AUTHORIZATION, "Basic bWVzaA==")]),
            headers(&[(header::COOKIE, "thunkmesh_viewer=mesh")]),
            headers(&[(header::AUTHORIZATION, "Bearer mesh2")]),
            HeaderMap::new(),
        ] {
            assert!(!shared.allows(carried(&wrong)), "{wrong:?}");
        }
    }
}
