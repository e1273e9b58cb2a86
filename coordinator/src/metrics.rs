//! Prometheus metrics (`/metrics`, text exposition format 0.0.4) from the same one-pass
//! report as `flotilla report`, computed per scrape: per-host last success, last backup
//! bytes and duration, consecutive failures and status; fleet gauges per status; job
//! counters by kind and outcome.

use crate::fleet::Fleet;
use crate::report::{FleetReport, HostStatus};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

/// A label value with `\`, `"` and newlines escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The exposition text.
pub fn render(report: &FleetReport, jobs: &BTreeMap<(String, String), u64>) -> String {
    let mut out = String::new();
    let mut family =
        |name: &str, kind: &str, help: &str, lines: &mut dyn Iterator<Item = String>| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for l in lines {
                let _ = writeln!(out, "{name}{l}");
            }
        };
    let hosts = &report.hosts;
    family(
        "flotilla_host_last_success_timestamp_seconds",
        "gauge",
        "End time of the host's last successful backup (0: never).",
        &mut hosts.iter().map(|h| {
            format!(
                "{{host=\"{}\"}} {}",
                label(&h.host_id),
                h.facts.last_success_at
            )
        }),
    );
    family(
        "flotilla_host_last_backup_bytes",
        "gauge",
        "Stored bytes of the host's last backup set.",
        &mut hosts.iter().map(|h| {
            format!(
                "{{host=\"{}\"}} {}",
                label(&h.host_id),
                h.facts.last_backup_bytes
            )
        }),
    );
    family(
        "flotilla_host_last_backup_duration_seconds",
        "gauge",
        "How long the host's last successful backup job ran.",
        &mut hosts.iter().map(|h| {
            format!(
                "{{host=\"{}\"}} {}",
                label(&h.host_id),
                h.facts.last_backup_duration_secs
            )
        }),
    );
    family(
        "flotilla_host_consecutive_failures",
        "gauge",
        "Failed backup jobs since the host's last successful one.",
        &mut hosts.iter().map(|h| {
            format!(
                "{{host=\"{}\"}} {}",
                label(&h.host_id),
                h.facts.consecutive_failures
            )
        }),
    );
    family(
        "flotilla_host_max_age_seconds",
        "gauge",
        "The freshness objective of the host's policy (absent without one).",
        &mut hosts.iter().filter_map(|h| {
            h.max_age_secs
                .map(|m| format!("{{host=\"{}\"}} {m}", label(&h.host_id)))
        }),
    );
    family(
        "flotilla_host_status",
        "gauge",
        "1 for the host's status (unprotected, never, stale, failing, offline, fresh), 0 for the others.",
        &mut hosts.iter().flat_map(|h| {
            HostStatus::ALL.iter().map(move |s| {
                format!(
                    "{{host=\"{}\",status=\"{}\"}} {}",
                    label(&h.host_id),
                    s.as_str(),
                    u8::from(h.status == *s)
                )
            })
        }),
    );
    family(
        "flotilla_hosts",
        "gauge",
        "Hosts per status.",
        &mut report
            .summary
            .by_status
            .iter()
            .map(|(s, n)| format!("{{status=\"{}\"}} {n}", label(s))),
    );
    family(
        "flotilla_hosts_fresh_ratio",
        "gauge",
        "Share of hosts that are fresh.",
        &mut std::iter::once(format!(" {}", report.summary.fresh_share)),
    );
    family(
        "flotilla_jobs_total",
        "counter",
        "Finished jobs in the catalog by kind and outcome.",
        &mut jobs
            .iter()
            .map(|((k, s), n)| format!("{{kind=\"{}\",state=\"{}\"}} {n}", label(k), label(s))),
    );
    out
}

/// Serves `/metrics` on `listener` until `stop` turns true.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    fleet: Arc<Fleet>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    use http_body_util::Full;
    use hyper::{Response, StatusCode, body::Bytes};
    tracing::info!("metrics at http://{}/metrics", listener.local_addr()?);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("metrics: accept: {e}");
                    continue;
                }
            },
            _ = stop.changed() => return Ok(()),
        };
        let fleet = fleet.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let fleet = fleet.clone();
                    async move {
                        if req.uri().path() != "/metrics" {
                            return Ok::<_, std::convert::Infallible>(
                                Response::builder()
                                    .status(StatusCode::NOT_FOUND)
                                    .body(Full::new(Bytes::from_static(b"see /metrics\n")))
                                    .expect("static response"),
                            );
                        }
                        let text = tokio::task::spawn_blocking(move || {
                            let report = fleet.report(BTreeMap::new(), 0, 0)?;
                            let jobs = fleet.catalog.job_counts()?;
                            Ok::<_, crate::fleet::FleetError>(render(&report, &jobs))
                        })
                        .await;
                        Ok(match text {
                            Ok(Ok(t)) => Response::builder()
                                .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                                .body(Full::new(Bytes::from(t)))
                                .expect("metrics response"),
                            Ok(Err(e)) => {
                                tracing::error!("metrics: {e}");
                                Response::builder()
                                    .status(StatusCode::INTERNAL_SERVER_ERROR)
                                    .body(Full::new(Bytes::from(format!("{e}\n"))))
                                    .expect("error response")
                            }
                            Err(e) => Response::builder()
                                .status(StatusCode::INTERNAL_SERVER_ERROR)
                                .body(Full::new(Bytes::from(format!("{e}\n"))))
                                .expect("error response"),
                        })
                    }
                });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("metrics connection: {e}");
            }
        });
    }
}
