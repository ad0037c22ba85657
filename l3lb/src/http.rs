//! The daemon's HTTP endpoint (`--metrics-addr`): `/metrics` for Prometheus, `/healthz` (the
//! process answers), `/readyz` (the first sync has converged) and `/status` (what this node
//! announces and why, as JSON, which `l3lb status` prints).
use std::{convert::Infallible, net::SocketAddr};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot, watch},
};
use tracing::{debug, warn};

use crate::{metrics::Metrics, status::ReportRequest};

#[derive(Clone)]
pub struct Endpoints {
    pub metrics: Metrics,
    pub ready: watch::Receiver<bool>,
    pub reports: mpsc::Sender<ReportRequest>,
}

/// Binds `addr` now (so a taken port fails start-up) and serves in the background.
pub async fn serve(addr: SocketAddr, endpoints: Endpoints) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    warn!("accepting on {bound}: {err}");
                    continue;
                }
            };
            let endpoints = endpoints.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let endpoints = endpoints.clone();
                    async move { Ok::<_, Infallible>(route(request, &endpoints).await) }
                });
                if let Err(err) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    debug!("serving {peer}: {err}");
                }
            });
        }
    });
    Ok(bound)
}

async fn route(request: Request<Incoming>, endpoints: &Endpoints) -> Response<Full<Bytes>> {
    if request.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match request.uri().path() {
        "/metrics" => {
            let mut response = text(StatusCode::OK, endpoints.metrics.encode());
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => {
            if *endpoints.ready.borrow() {
                text(StatusCode::OK, "ready\n".into())
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not synced yet\n".into())
            }
        }
        "/status" => {
            let (tx, rx) = oneshot::channel();
            let report = match endpoints.reports.send(tx).await {
                Ok(()) => rx.await.ok(),
                Err(_) => None,
            };
            match report.map(|report| serde_json::to_string_pretty(&report)) {
                Some(Ok(json)) => {
                    let mut response = text(StatusCode::OK, json + "\n");
                    response.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("application/json"),
                    );
                    response
                }
                _ => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the controller is not running\n".into(),
                ),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "try /metrics, /healthz, /readyz or /status\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}
