//! The plain-HTTP companion of an HTTPS mirror (`http_redirect_listen`): `/healthz` answers
//! here (load balancers often probe over HTTP), every other request is sent to the same host,
//! path and query over HTTPS with `308 Permanent Redirect` (method and body kept). With
//! `[acme]` and `challenge = "http-01"`, the CA's `/.well-known/acme-challenge/TOKEN` requests
//! are answered here too.
//!
//! Owns: this listener's accept loop and its two answers. It serves no content and never calls
//! the api.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Limits;
use crate::edge::tls::acme::Certs;

const ACME_CHALLENGE: &str = "/.well-known/acme-challenge/";

/// Accept and answer until `stop`.
pub(super) async fn serve(
    listener: TcpListener,
    https_port: u16,
    limits: Limits,
    acme: Option<Arc<Certs>>,
    stop: CancellationToken,
) {
    loop {
        let Some((stream, _)) = super::accept(&listener, &stop, "redirect").await else {
            return;
        };
        let acme = acme.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let acme = acme.clone();
                async move {
                    if let (Some(token), Some(certs)) =
                        (req.uri().path().strip_prefix(ACME_CHALLENGE), &acme)
                    {
                        return Ok::<_, Infallible>(challenge(certs, token));
                    }
                    Ok::<_, Infallible>(answer(&req, https_port))
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(limits.max_header_bytes)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "redirect connection ended with an error");
            }
        });
    }
}

/// The key authorization of an HTTP-01 validation in progress, or 404.
fn challenge(certs: &Certs, token: &str) -> Response<Full<Bytes>> {
    match certs.http_challenge(token) {
        Some(key_authorization) => {
            tracing::info!("ACME: answered an HTTP-01 validation");
            let mut resp = Response::new(Full::new(Bytes::from(key_authorization)));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            resp
        }
        None => text(StatusCode::NOT_FOUND, "no such ACME challenge\n"),
    }
}

/// The answer to one request on the redirect listener.
fn answer<B>(req: &Request<B>, https_port: u16) -> Response<Full<Bytes>> {
    if req.uri().path() == "/healthz" {
        return text(StatusCode::OK, "ok\n");
    }
    match location(req, https_port) {
        Some(loc) => {
            let mut resp = text(
                StatusCode::PERMANENT_REDIRECT,
                "this mirror is served over HTTPS\n",
            );
            resp.headers_mut().insert(header::LOCATION, loc);
            resp
        }
        None => text(
            StatusCode::BAD_REQUEST,
            "no valid Host header; use https:// with this mirror's name\n",
        ),
    }
}

/// `https://HOST[:PORT]/path?query`: the request's host (from the absolute URI or `Host`) with
/// the HTTPS listener's port (left out when 443).
fn location<B>(req: &Request<B>, https_port: u16) -> Option<HeaderValue> {
    let authority: http::uri::Authority = match req.uri().authority() {
        Some(a) => a.clone(),
        None => req
            .headers()
            .get(header::HOST)?
            .to_str()
            .ok()?
            .parse()
            .ok()?,
    };
    let host = authority.host();
    if host.is_empty() || authority.as_str().contains('@') {
        return None;
    }
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    HeaderValue::from_str(&format!("https://{host}{port}{path}")).ok()
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, host: Option<&str>) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header(header::HOST, h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn redirects_keep_host_path_and_query() {
        // (uri, Host, https port, expected status, expected Location)
        let cases = [
            (
                "/v2/library/alpine/manifests/3?ns=docker.io",
                Some("mirror.example.com"),
                443,
                308,
                Some("https://mirror.example.com/v2/library/alpine/manifests/3?ns=docker.io"),
            ),
            (
                "/v2/",
                Some("mirror.example.com:80"),
                8443,
                308,
                Some("https://mirror.example.com:8443/v2/"),
            ),
            (
                "/v2/",
                Some("127.0.0.1:5080"),
                5443,
                308,
                Some("https://127.0.0.1:5443/v2/"),
            ),
            (
                "/v2/",
                Some("[::1]:80"),
                443,
                308,
                Some("https://[::1]/v2/"),
            ),
            (
                "http://other.example/x",
                None,
                443,
                308,
                Some("https://other.example/x"),
            ),
            ("/healthz", None, 443, 200, None),
            ("/v2/", None, 443, 400, None),
            ("/v2/", Some("bad host"), 443, 400, None),
            ("/v2/", Some("user@evil.example"), 443, 400, None),
        ];
        for (uri, host, port, status, loc) in cases {
            let resp = answer(&req(uri, host), port);
            assert_eq!(resp.status().as_u16(), status, "{uri} {host:?}");
            let got = resp
                .headers()
                .get(header::LOCATION)
                .map(|v| v.to_str().unwrap().to_string());
            assert_eq!(got.as_deref(), loc, "{uri} {host:?}");
        }
    }
}
