//! Metric names and recording helpers: every Prometheus series regmirror exports is named here.
//!
//! Owns: the names, labels and units. Callers record through these functions so that the list in the
//! README and the code cannot drift apart. Must not do I/O (the exporter renders on `GET /metrics`).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub(crate) const REQUESTS: &str = "regmirror_http_requests_total";
pub(crate) const REQUEST_SECONDS: &str = "regmirror_http_request_duration_seconds";
pub(crate) const CACHE_REQUESTS: &str = "regmirror_cache_requests_total";
pub(crate) const BYTES_SERVED: &str = "regmirror_bytes_served_total";
pub(crate) const UPSTREAM_REQUESTS: &str = "regmirror_upstream_requests_total";
pub(crate) const UPSTREAM_SECONDS: &str = "regmirror_upstream_request_duration_seconds";
pub(crate) const UPSTREAM_ERRORS: &str = "regmirror_upstream_errors_total";
pub(crate) const FILLS_IN_FLIGHT: &str = "regmirror_fills_in_flight";
pub(crate) const FILLS_TOTAL: &str = "regmirror_fills_total";
pub(crate) const JOINED: &str = "regmirror_coalesced_requests_total";
pub(crate) const CACHE_BYTES: &str = "regmirror_cache_size_bytes";
pub(crate) const CACHE_OBJECTS: &str = "regmirror_cache_objects";
pub(crate) const EVICTIONS: &str = "regmirror_evictions_total";
pub(crate) const EVICTED_BYTES: &str = "regmirror_evicted_bytes_total";
pub(crate) const RATELIMIT_REMAINING: &str = "regmirror_upstream_ratelimit_remaining";
pub(crate) const STALE_SERVED: &str = "regmirror_stale_served_total";
pub(crate) const UPSTREAM_UP: &str = "regmirror_upstream_up";
pub(crate) const REVALIDATIONS: &str = "regmirror_revalidations_total";
pub(crate) const NEGATIVE_HITS: &str = "regmirror_negative_cache_hits_total";
pub(crate) const LINK_CONFIRMS: &str = "regmirror_link_confirmations_total";
pub(crate) const TLS_HANDSHAKES: &str = "regmirror_tls_handshakes_total";
pub(crate) const TLS_RELOADS: &str = "regmirror_tls_reloads_total";
pub(crate) const REDIS_UP: &str = "regmirror_redis_up";
pub(crate) const REDIS_ERRORS: &str = "regmirror_redis_errors_total";
pub(crate) const REDIS_SECONDS: &str = "regmirror_redis_command_duration_seconds";
pub(crate) const LEASES: &str = "regmirror_leases_total";
pub(crate) const LEASES_HELD: &str = "regmirror_leases_held";
pub(crate) const PEER_FILLS: &str = "regmirror_peer_fills_total";
pub(crate) const SHARED_TAGS: &str = "regmirror_shared_tag_records_total";

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Install the Prometheus recorder once per process. Returns None if another recorder is installed.
pub(crate) fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                ])
                .ok()?;
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            Some(handle)
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        REQUESTS,
        "HTTP requests by endpoint kind, method and status"
    );
    describe_histogram!(
        REQUEST_SECONDS,
        Unit::Seconds,
        "Time to the response head, by endpoint kind"
    );
    describe_counter!(CACHE_REQUESTS, "Cache outcomes by kind (blob, manifest) and status (hit, miss, joined, stale, passthrough)");
    describe_counter!(
        BYTES_SERVED,
        Unit::Bytes,
        "Blob bytes sent to clients, by source (cache, upstream)"
    );
    describe_counter!(
        UPSTREAM_REQUESTS,
        "Requests sent to upstreams, by upstream and status"
    );
    describe_histogram!(
        UPSTREAM_SECONDS,
        Unit::Seconds,
        "Upstream time to response head, by upstream"
    );
    describe_counter!(UPSTREAM_ERRORS, "Upstream failures by upstream and kind");
    describe_gauge!(FILLS_IN_FLIGHT, "Blob downloads running now");
    describe_counter!(FILLS_TOTAL, "Blob downloads by outcome (ok, failed)");
    describe_counter!(
        JOINED,
        "Requests that joined a download another request started"
    );
    describe_gauge!(
        CACHE_BYTES,
        Unit::Bytes,
        "Bytes of blobs and manifests in the cache (as of the last scan)"
    );
    describe_gauge!(
        CACHE_OBJECTS,
        "Blobs and manifests in the cache (as of the last scan)"
    );
    describe_gauge!(
        UPSTREAM_UP,
        "1 while the upstream is reachable, 0 while it is down (requests fail fast, a probe runs)"
    );
    describe_counter!(
        REVALIDATIONS,
        "Background revalidations of expired tags by upstream and outcome (same, changed, gone, failed)"
    );
    describe_counter!(
        NEGATIVE_HITS,
        "Requests answered \"not found\" from the short-lived negative cache, by kind"
    );
    describe_counter!(
        LINK_CONFIRMS,
        "Upstream HEADs asked to confirm that a repository holds content cached for another, by kind"
    );
    describe_counter!(EVICTIONS, "Objects removed by eviction");
    describe_counter!(EVICTED_BYTES, Unit::Bytes, "Bytes removed by eviction");
    describe_gauge!(
        RATELIMIT_REMAINING,
        "Last ratelimit-remaining header seen from each upstream"
    );
    describe_counter!(
        STALE_SERVED,
        "Manifests served stale because the upstream was unavailable"
    );
    describe_counter!(
        TLS_HANDSHAKES,
        "TLS handshakes on HTTPS listeners by result (ok, failed, timeout), ALPN protocol and TLS version"
    );
    describe_gauge!(
        REDIS_UP,
        "1 while Redis answers (fills and tags coordinated across replicas), 0 while it does not (each replica coalesces alone)"
    );
    describe_counter!(
        REDIS_ERRORS,
        "Redis commands that failed or timed out, by operation"
    );
    describe_histogram!(
        REDIS_SECONDS,
        Unit::Seconds,
        "Redis command latency, by operation"
    );
    describe_counter!(
        LEASES,
        "Lease attempts by kind (fill, tag) and result (acquired, held, taken_over, unavailable; lost: expired before its work ended)"
    );
    describe_gauge!(LEASES_HELD, "Leases this replica holds now, by kind");
    describe_counter!(
        PEER_FILLS,
        "Fills read from or served to other replicas, by role (joined, served) and outcome"
    );
    describe_counter!(
        SHARED_TAGS,
        "Tag freshness answered from records shared in Redis, by result (fresh, stale, missing)"
    );
    describe_counter!(
        TLS_RELOADS,
        "Certificate reloads by result (ok; failed: the previous certificates stay)"
    );
}

/// One TLS handshake: `result` ok / failed / timeout; `alpn` and `version` "-" unless ok.
pub(crate) fn tls_handshake(result: &'static str, alpn: &'static str, version: &'static str) {
    metrics::counter!(TLS_HANDSHAKES, "result" => result, "alpn" => alpn, "version" => version)
        .increment(1);
}

/// One certificate reload that read the files: `result` ok / failed.
pub(crate) fn tls_reload(result: &'static str) {
    metrics::counter!(TLS_RELOADS, "result" => result).increment(1);
}

/// Render the current metrics in the Prometheus text format.
pub(crate) fn render() -> String {
    match HANDLE.get() {
        Some(Some(h)) => h.render(),
        _ => String::from("# metrics recorder not installed\n"),
    }
}
