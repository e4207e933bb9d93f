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
pub(crate) const EVICTION_RUNS: &str = "regmirror_eviction_runs_total";
pub(crate) const EVICTION_KEPT_IN_USE: &str = "regmirror_eviction_kept_in_use_total";
pub(crate) const RATELIMIT_REMAINING: &str = "regmirror_upstream_ratelimit_remaining";
pub(crate) const STALE_SERVED: &str = "regmirror_stale_served_total";
pub(crate) const UPSTREAM_UP: &str = "regmirror_upstream_up";
pub(crate) const REVALIDATIONS: &str = "regmirror_revalidations_total";
pub(crate) const NEGATIVE_HITS: &str = "regmirror_negative_cache_hits_total";
pub(crate) const LINK_CONFIRMS: &str = "regmirror_link_confirmations_total";
pub(crate) const TLS_HANDSHAKES: &str = "regmirror_tls_handshakes_total";
pub(crate) const TLS_RELOADS: &str = "regmirror_tls_reloads_total";
pub(crate) const ACME_ORDERS: &str = "regmirror_acme_orders_total";
pub(crate) const ACME_EXPIRY: &str = "regmirror_acme_certificate_expiry_timestamp_seconds";
pub(crate) const PREFETCH_RUNS: &str = "regmirror_prefetch_runs_total";
pub(crate) const PREFETCH_LAST_RUN: &str = "regmirror_prefetch_last_run_timestamp_seconds";
pub(crate) const PREFETCH_LAST_IMAGES: &str = "regmirror_prefetch_last_run_images";
pub(crate) const PREFETCH_BYTES: &str = "regmirror_prefetch_fetched_bytes_total";
pub(crate) const WEBHOOK_REVIEWS: &str = "regmirror_webhook_reviews_total";
pub(crate) const WEBHOOK_REWRITES: &str = "regmirror_webhook_rewrites_total";
pub(crate) const WEBHOOK_SKIPS: &str = "regmirror_webhook_skips_total";
pub(crate) const S3_REQUEST_SECONDS: &str = "regmirror_s3_request_duration_seconds";
pub(crate) const S3_ERRORS: &str = "regmirror_s3_errors_total";
pub(crate) const S3_MULTIPART_IN_FLIGHT: &str = "regmirror_s3_multipart_uploads_in_flight";
pub(crate) const S3_CORRUPT: &str = "regmirror_s3_corrupt_objects_total";
pub(crate) const LOCAL_TIER_BYTES: &str = "regmirror_local_tier_bytes";
pub(crate) const LOCAL_TIER_REQUESTS: &str = "regmirror_local_tier_requests_total";
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
    describe_histogram!(
        S3_REQUEST_SECONDS,
        Unit::Seconds,
        "S3 request latency by operation (head, get, put, part, complete, abort, list, delete, copy)"
    );
    describe_counter!(
        S3_ERRORS,
        "Failed S3 requests by operation and kind (not_found excluded)"
    );
    describe_gauge!(
        S3_MULTIPART_IN_FLIGHT,
        "S3 multipart uploads started and not yet completed or aborted"
    );
    describe_counter!(
        S3_CORRUPT,
        "Objects read from S3 whose bytes did not match their digest (deleted)"
    );
    describe_gauge!(
        LOCAL_TIER_BYTES,
        "Bytes of blobs in the local tier in front of S3"
    );
    describe_counter!(
        LOCAL_TIER_REQUESTS,
        "Local tier lookups by outcome (hit, miss)"
    );
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
    describe_counter!(
        EVICTION_RUNS,
        "Eviction runs by result (ran; on a shared store also skipped_lease: another replica ran, skipped_redis_down)"
    );
    describe_counter!(
        EVICTION_KEPT_IN_USE,
        "Objects eviction would have removed but kept because a client (of any replica) was reading them"
    );
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
        "TLS handshakes on HTTPS listeners by result (ok, failed, timeout, acme: a TLS-ALPN-01 validation), ALPN protocol and TLS version"
    );
    describe_counter!(PREFETCH_RUNS, "Runs of each [[prefetch]] schedule");
    describe_gauge!(
        PREFETCH_LAST_RUN,
        Unit::Seconds,
        "When the last run of each [[prefetch]] schedule finished (seconds since the epoch)"
    );
    describe_gauge!(
        PREFETCH_LAST_IMAGES,
        "Images of the last run of each [[prefetch]] schedule by outcome (ok: fetched or already cached; failed)"
    );
    describe_counter!(
        PREFETCH_BYTES,
        Unit::Bytes,
        "Bytes fetched from upstreams by [[prefetch]] schedules"
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
    describe_counter!(
        ACME_ORDERS,
        "ACME certificate orders by result (ok; failed: retried later, the current certificate stays)"
    );
    describe_gauge!(
        ACME_EXPIRY,
        Unit::Seconds,
        "When the ACME certificate in service expires (Unix time)"
    );
    describe_counter!(
        WEBHOOK_REVIEWS,
        "Admission reviews answered by the webhook, by result (patched, unchanged, malformed, wrong_version)"
    );
    describe_counter!(WEBHOOK_REWRITES, "Images the webhook rewrote, by registry");
    describe_counter!(
        WEBHOOK_SKIPS,
        "Images (or whole objects) the webhook left alone, by reason"
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

/// One ACME order that ended: `result` ok / failed.
pub(crate) fn acme_order(result: &'static str) {
    metrics::counter!(ACME_ORDERS, "result" => result).increment(1);
}

/// When the ACME certificate in service expires (Unix seconds), for expiry alerts.
pub(crate) fn acme_expiry(not_after: &std::time::SystemTime) {
    let secs = not_after
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    metrics::gauge!(ACME_EXPIRY).set(secs);
}

/// One finished run of the `[[prefetch]]` schedule `schedule`.
pub(crate) fn prefetch_run(schedule: &str, finished: u64, ok: u64, failed: u64, bytes: u64) {
    let s = schedule.to_string();
    metrics::counter!(PREFETCH_RUNS, "schedule" => s.clone()).increment(1);
    metrics::gauge!(PREFETCH_LAST_RUN, "schedule" => s.clone()).set(finished as f64);
    metrics::gauge!(PREFETCH_LAST_IMAGES, "schedule" => s.clone(), "outcome" => "ok")
        .set(ok as f64);
    metrics::gauge!(PREFETCH_LAST_IMAGES, "schedule" => s.clone(), "outcome" => "failed")
        .set(failed as f64);
    metrics::counter!(PREFETCH_BYTES, "schedule" => s).increment(bytes);
}

/// One AdmissionReview answered: `result` patched / unchanged / malformed / wrong_version.
pub(crate) fn webhook_review(result: &'static str) {
    metrics::counter!(WEBHOOK_REVIEWS, "result" => result).increment(1);
}

/// `n` images rewritten by the webhook, by the registry they named.
pub(crate) fn webhook_rewrite(registry: &str, n: u64) {
    metrics::counter!(WEBHOOK_REWRITES, "registry" => registry.to_string()).increment(n);
}

/// `n` images (or whole objects) the webhook left alone, by reason.
pub(crate) fn webhook_skip(reason: &'static str, n: u64) {
    metrics::counter!(WEBHOOK_SKIPS, "reason" => reason).increment(n);
}

/// Render the current metrics in the Prometheus text format.
pub(crate) fn render() -> String {
    match HANDLE.get() {
        Some(Some(h)) => h.render(),
        _ => String::from("# metrics recorder not installed\n"),
    }
}
