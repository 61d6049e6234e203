//! `GET /metrics` in the Prometheus text format (version 0.0.4), for the node's and the
//! gateway's counters.
//!
//! Written by hand: every figure already lives in an atomic counter or a stats snapshot, so
//! rendering is a few lines of text per metric, where a metrics crate would want its own
//! registry of metric objects beside ours.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};

/// The `Content-Type` of the text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metrics page being written.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

/// What a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only ever grows (reset by a restart).
    Counter,
    /// Goes up and down.
    Gauge,
}

impl Exposition {
    /// An empty page.
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// One metric with one unlabelled sample.
    pub fn metric(&mut self, name: &str, kind: Kind, help: &str, value: f64) -> &mut Self {
        self.family(name, kind, help, [(&[][..], value)])
    }

    /// One metric with a sample per label set (`[(&[("method", "GET")], 3.0)]`).
    pub fn family<'a>(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        samples: impl IntoIterator<Item = (&'a [(&'a str, &'a str)], f64)>,
    ) -> &mut Self {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            self.sample(name, labels, None, value);
        }
        self
    }

    /// One histogram with a series per label set: `_bucket{le}` (cumulative), `_sum`, `_count`.
    pub fn histogram<'a>(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (&'a [(&'a str, &'a str)], &'a Histogram)>,
    ) -> &mut Self {
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} histogram");
        for (labels, h) in series {
            let mut cumulative = 0;
            let bounds = h.bounds.iter().map(|b| b.to_string());
            let les = bounds.chain(std::iter::once("+Inf".to_owned()));
            for (le, n) in les.zip(&h.counts) {
                cumulative += n;
                self.sample(
                    &format!("{name}_bucket"),
                    labels,
                    Some(&le),
                    cumulative as f64,
                );
            }
            self.sample(&format!("{name}_sum"), labels, None, h.sum);
            self.sample(&format!("{name}_count"), labels, None, cumulative as f64);
        }
        self
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], le: Option<&str>, value: f64) {
        self.text.push_str(name);
        let le = le.map(|v| ("le", v));
        let all: Vec<(&str, &str)> = labels.iter().copied().chain(le).collect();
        if !all.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in all.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", escape_label(v));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    /// The page.
    pub fn finish(self) -> String {
        self.text
    }
}

/// Observations counted into buckets (upper bounds, ascending) and one overflow bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative), the last one past every bound.
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    /// Empty, with buckets up to each of `bounds` (ascending) and one past them.
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    /// Counts one observation.
    pub fn observe(&mut self, value: f64) {
        let i = self.bounds.partition_point(|b| *b < value);
        self.counts[i] += 1;
        self.sum += value;
    }
}

/// Requests answered and body bytes sent, per method and status, and how long requests took
/// per method: what an HTTP endpoint's access log counts for `GET /metrics`. Bounded: eight
/// method names (others count as `other`) times the statuses the endpoint answers with.
#[derive(Debug, Default)]
pub struct RequestCounts(Mutex<Counted>);

#[derive(Debug, Default)]
struct Counted {
    /// `(method, status)` → (requests, body bytes).
    by_status: BTreeMap<(&'static str, u16), (u64, u64)>,
    durations: BTreeMap<&'static str, Histogram>,
}

/// Upper bounds of the request-duration buckets, in seconds: manifest answers take
/// milliseconds, blob bodies up to minutes.
pub const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

impl RequestCounts {
    /// Counts one request whose body ended (sent or dropped) `seconds` after it arrived.
    pub fn record(&self, method: &http::Method, status: u16, bytes: u64, seconds: f64) {
        use http::Method;
        let name = match *method {
            Method::GET => "GET",
            Method::HEAD => "HEAD",
            Method::PUT => "PUT",
            Method::POST => "POST",
            Method::PATCH => "PATCH",
            Method::DELETE => "DELETE",
            Method::OPTIONS => "OPTIONS",
            _ => "other",
        };
        let mut c = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let e = c.by_status.entry((name, status)).or_default();
        e.0 += 1;
        e.1 += bytes;
        c.durations
            .entry(name)
            .or_insert_with(|| Histogram::new(DURATION_BUCKETS))
            .observe(seconds);
    }

    /// Writes `{prefix}_http_requests_total` and `{prefix}_http_response_bytes_total` (by
    /// `method` and `code`) and the histogram `{prefix}_http_request_duration_seconds` (by
    /// `method`).
    pub fn write(&self, e: &mut Exposition, prefix: &str) {
        let (by_status, durations) = {
            let c = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            let d: Vec<(&'static str, Histogram)> =
                c.durations.iter().map(|(k, v)| (*k, v.clone())).collect();
            (c.by_status.clone(), d)
        };
        let codes: Vec<String> = by_status.keys().map(|(_, c)| c.to_string()).collect();
        let labels: Vec<[(&str, &str); 2]> = by_status
            .keys()
            .zip(&codes)
            .map(|((m, _), c)| [("method", *m), ("code", c.as_str())])
            .collect();
        e.family(
            &format!("{prefix}_http_requests_total"),
            Kind::Counter,
            "HTTP requests answered, by method and status.",
            labels
                .iter()
                .zip(by_status.values())
                .map(|(l, (n, _))| (&l[..], *n as f64)),
        )
        .family(
            &format!("{prefix}_http_response_bytes_total"),
            Kind::Counter,
            "Response body bytes sent, by method and status.",
            labels
                .iter()
                .zip(by_status.values())
                .map(|(l, (_, b))| (&l[..], *b as f64)),
        );
        let methods: Vec<[(&str, &str); 1]> =
            durations.iter().map(|(m, _)| [("method", *m)]).collect();
        e.histogram(
            &format!("{prefix}_http_request_duration_seconds"),
            "Time from a request's arrival until its response body was sent (or dropped), by method.",
            methods
                .iter()
                .zip(&durations)
                .map(|(l, (_, h))| (&l[..], h)),
        );
    }
}

/// A `# HELP` text: backslash and newline escaped.
fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A label value: backslash, double quote and newline escaped.
fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_text_format() {
        let mut e = Exposition::new();
        e.metric("a_total", Kind::Counter, "Things done.", 3.0)
            .family(
                "b",
                Kind::Gauge,
                "Per \\ kind\nof thing.",
                [
                    (&[("k", "x"), ("v", "1")][..], 1.5),
                    (&[("k", "say \"hi\"\n")][..], 0.0),
                ],
            );
        assert_eq!(
            e.finish(),
            "# HELP a_total Things done.\n# TYPE a_total counter\na_total 3\n\
             # HELP b Per \\\\ kind\\nof thing.\n# TYPE b gauge\nb{k=\"x\",v=\"1\"} 1.5\n\
             b{k=\"say \\\"hi\\\"\\n\"} 0\n"
        );
    }

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        for v in [0.05, 0.1, 0.5, 3.0] {
            h.observe(v);
        }
        let mut e = Exposition::new();
        e.histogram("d_seconds", "Time.", [(&[("m", "GET")][..], &h)]);
        assert_eq!(
            e.finish(),
            "# HELP d_seconds Time.\n# TYPE d_seconds histogram\n\
             d_seconds_bucket{m=\"GET\",le=\"0.1\"} 2\n\
             d_seconds_bucket{m=\"GET\",le=\"1\"} 3\n\
             d_seconds_bucket{m=\"GET\",le=\"+Inf\"} 4\n\
             d_seconds_sum{m=\"GET\"} 3.65\n\
             d_seconds_count{m=\"GET\"} 4\n"
        );
    }
}
