//! `GET /metrics` in the Prometheus text format (version 0.0.4), for the node's and the
//! gateway's counters.
//!
//! Written by hand: every figure already lives in an atomic counter or a stats snapshot, so
//! rendering is a few lines of text per metric, where a metrics crate would want its own
//! registry of metric objects beside ours.

use std::fmt::Write as _;

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
            self.text.push_str(name);
            if !labels.is_empty() {
                self.text.push('{');
                for (i, (k, v)) in labels.iter().enumerate() {
                    if i > 0 {
                        self.text.push(',');
                    }
                    let _ = write!(self.text, "{k}=\"{}\"", escape_label(v));
                }
                self.text.push('}');
            }
            let _ = writeln!(self.text, " {value}");
        }
        self
    }

    /// The page.
    pub fn finish(self) -> String {
        self.text
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
}
