//! Outcome counts, latency percentiles (hdrhistogram, microsecond
//! resolution), invariant checks, and the two renderings: an aligned table for
//! people and one JSON object for scripts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::Value;

use crate::client::Answer;

/// Highest latency the histogram tracks exactly (longer ones are clamped).
const MAX_TRACKED_MICROS: u64 = 3_600 * 1_000_000;

/// Outcome counts and a latency histogram for a set of requests.
#[derive(Debug, Clone)]
pub struct Tally {
    pub outcomes: BTreeMap<String, u64>,
    hist: Histogram<u64>,
}

impl Default for Tally {
    fn default() -> Self {
        Self::new()
    }
}

impl Tally {
    pub fn new() -> Self {
        Self {
            outcomes: BTreeMap::new(),
            // 3 significant digits between 1 µs and one hour: fixed bounds
            // that are always valid, so this cannot fail.
            hist: Histogram::new_with_bounds(1, MAX_TRACKED_MICROS, 3)
                .expect("static histogram bounds are valid"),
        }
    }

    pub fn record(&mut self, key: String, latency: Duration) {
        *self.outcomes.entry(key).or_insert(0) += 1;
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, MAX_TRACKED_MICROS);
        self.hist.saturating_record(micros);
    }

    pub fn record_answer(&mut self, a: &Answer) {
        self.record(a.key(), a.latency);
    }

    pub fn from_answers<'a>(answers: impl IntoIterator<Item = &'a Answer>) -> Self {
        let mut t = Self::new();
        for a in answers {
            t.record_answer(a);
        }
        t
    }

    pub fn merge(&mut self, other: &Tally) {
        for (k, v) in &other.outcomes {
            *self.outcomes.entry(k.clone()).or_insert(0) += v;
        }
        // Same bounds on both sides: adding cannot fail.
        let _ = self.hist.add(&other.hist);
    }

    pub fn requests(&self) -> u64 {
        self.outcomes.values().sum()
    }

    pub fn latency(&self) -> LatencySummary {
        LatencySummary::of(&self.hist)
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct LatencySummary {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

fn ms(micros: u64) -> f64 {
    (micros as f64 / 1000.0 * 1000.0).round() / 1000.0
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// One invariant check.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// The names of the checks that failed.
#[cfg(test)]
pub fn failed(checks: &[Check]) -> Vec<&str> {
    checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.name.as_str())
        .collect()
}

impl Check {
    pub fn new(name: &str, ok: bool, detail: impl Into<String>) -> Self {
        Self {
            name: name.to_string(),
            ok,
            detail: detail.into(),
        }
    }

    /// Passes when every answer counted in `outcomes` has one of the
    /// `allowed` outcome keys (`201`, `409:sold_out`, ...); the detail
    /// counts the others.
    pub fn answers(name: &str, outcomes: &BTreeMap<String, u64>, allowed: &[&str]) -> Self {
        let total: u64 = outcomes.values().sum();
        let allowed_text = match allowed {
            [] => String::from("nothing"),
            [one] => (*one).to_string(),
            [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
        };
        let others: Vec<String> = outcomes
            .iter()
            .filter(|(k, _)| !allowed.contains(&k.as_str()))
            .map(|(k, n)| format!("{k} x{n}"))
            .collect();
        if others.is_empty() {
            Self::new(
                name,
                true,
                format!("all {total} answers are {allowed_text}"),
            )
        } else {
            Self::new(
                name,
                false,
                format!(
                    "unexpected answers (of {total}; allowed {allowed_text}): {}",
                    others.join(", ")
                ),
            )
        }
    }
}

/// How many of `answers` had each outcome (`201`, `409:sold_out`, ...).
pub fn count_outcomes<'a>(answers: impl IntoIterator<Item = &'a Answer>) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for a in answers {
        *counts.entry(a.key()).or_insert(0) += 1;
    }
    counts
}

/// Requests, outcomes and latency of one phase of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub name: String,
    pub requests: u64,
    pub wall_ms: f64,
    pub throughput_rps: f64,
    pub outcomes: BTreeMap<String, u64>,
    pub latency_ms: LatencySummary,
}

fn rate(requests: u64, wall: Duration) -> f64 {
    let secs = wall.as_secs_f64();
    if secs > 0.0 {
        (requests as f64 / secs * 10.0).round() / 10.0
    } else {
        0.0
    }
}

fn wall_ms(wall: Duration) -> f64 {
    (wall.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

impl Phase {
    pub fn new(name: &str, tally: &Tally, wall: Duration) -> Self {
        Self {
            name: name.to_string(),
            requests: tally.requests(),
            wall_ms: wall_ms(wall),
            throughput_rps: rate(tally.requests(), wall),
            outcomes: tally.outcomes.clone(),
            latency_ms: tally.latency(),
        }
    }
}

/// The whole run: what `--json` prints, and what the table shows.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub command: String,
    pub url: String,
    pub sale: String,
    pub requests: u64,
    pub wall_ms: f64,
    pub throughput_rps: f64,
    pub outcomes: BTreeMap<String, u64>,
    pub latency_ms: LatencySummary,
    pub checks: Vec<Check>,
    pub ok: bool,
    /// The scenario's parameters (buyers, stock, ...).
    pub params: Params,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<Phase>,
}

/// A run's parameters, in the order they were given (shown in that order in
/// the table; a JSON object in the report).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params(pub Vec<(String, Value)>);

impl Params {
    pub fn new(pairs: Vec<(&str, Value)>) -> Self {
        Self(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }
}

impl Serialize for Params {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// What a run is: its command, target and parameters.
#[derive(Debug, Clone)]
pub struct Head {
    pub command: String,
    pub url: String,
    pub sale: String,
    pub params: Params,
}

impl Head {
    pub fn new(command: &str, url: &str, sale: &str, params: Params) -> Self {
        Self {
            command: command.to_string(),
            url: url.to_string(),
            sale: sale.to_string(),
            params,
        }
    }
}

impl Report {
    pub fn new(
        head: Head,
        tally: &Tally,
        wall: Duration,
        phases: Vec<Phase>,
        checks: Vec<Check>,
    ) -> Self {
        let ok = checks.iter().all(|c| c.ok);
        let Head {
            command,
            url,
            sale,
            params,
        } = head;
        Self {
            command,
            url,
            sale,
            requests: tally.requests(),
            wall_ms: wall_ms(wall),
            throughput_rps: rate(tally.requests(), wall),
            outcomes: tally.outcomes.clone(),
            latency_ms: tally.latency(),
            checks,
            ok,
            params,
            phases,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The aligned table for people.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "flashgate-loadtest {}", self.command);
        let mut kv: Vec<(String, String)> = vec![
            ("url".into(), self.url.clone()),
            ("sale".into(), self.sale.clone()),
        ];
        {
            for (k, v) in &self.params.0 {
                let v = match v {
                    Value::String(s) => s.clone(),
                    // A nested object (e.g. the sale view): `k v, k v` on one line.
                    Value::Object(inner) => inner
                        .iter()
                        .filter(|(ik, _)| ik.as_str() != "sale_id")
                        .map(|(ik, iv)| match iv {
                            Value::String(s) => format!("{ik} {s}"),
                            other => format!("{ik} {other}"),
                        })
                        .collect::<Vec<_>>()
                        .join(", "),
                    other => other.to_string(),
                };
                kv.push((k.replace('_', " "), v));
            }
        }
        let w = kv.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (k, v) in &kv {
            let _ = writeln!(out, "  {k:<w$}  {v}");
        }
        out.push('\n');

        let mut sections: Vec<(String, Phase)> = self
            .phases
            .iter()
            .map(|p| (format!("phase {}", p.name), p.clone()))
            .collect();
        let total_title = if self.phases.is_empty() {
            "requests"
        } else {
            "all phases"
        };
        sections.push((
            total_title.to_string(),
            Phase {
                name: total_title.to_string(),
                requests: self.requests,
                wall_ms: self.wall_ms,
                throughput_rps: self.throughput_rps,
                outcomes: self.outcomes.clone(),
                latency_ms: self.latency_ms,
            },
        ));

        for (title, p) in &sections {
            let (requests, wall, rps, outcomes, lat) = (
                p.requests,
                p.wall_ms,
                p.throughput_rps,
                &p.outcomes,
                p.latency_ms,
            );
            let _ = writeln!(
                out,
                "{title}: {requests} requests in {wall:.1} ms ({rps:.1} req/s)"
            );
            let kw = outcomes.keys().map(String::len).max().unwrap_or(0).max(7);
            let _ = writeln!(out, "  {:<kw$}  {:>8}  {:>6}", "outcome", "count", "share");
            for (k, v) in outcomes {
                let share = if requests > 0 {
                    *v as f64 * 100.0 / requests as f64
                } else {
                    0.0
                };
                let _ = writeln!(out, "  {k:<kw$}  {v:>8}  {share:>5.1}%");
            }
            let _ = writeln!(
                out,
                "  latency ms  {:>9} {:>9} {:>9} {:>9} {:>9}",
                "p50", "p90", "p99", "p99.9", "max"
            );
            let _ = writeln!(
                out,
                "              {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                lat.p50, lat.p90, lat.p99, lat.p999, lat.max
            );
            out.push('\n');
        }

        if !self.checks.is_empty() {
            let _ = writeln!(out, "checks");
            let nw = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
            for c in &self.checks {
                let mark = if c.ok { " ok " } else { "FAIL" };
                let _ = writeln!(out, "  [{mark}] {:<nw$}  {}", c.name, c.detail);
            }
            out.push('\n');
        }
        let failed = self.checks.iter().filter(|c| !c.ok).count();
        if self.ok {
            let _ = writeln!(out, "result: OK ({} checks passed)", self.checks.len());
        } else {
            let _ = writeln!(
                out,
                "result: FAILED ({failed} of {} checks violated)",
                self.checks.len()
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: Option<u16>, code: Option<&str>, ms: u64) -> Answer {
        Answer {
            status,
            code: code.map(str::to_string),
            latency: Duration::from_millis(ms),
            body: None,
        }
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut t = Tally::new();
        for i in 1..=1000u64 {
            t.record("201".into(), Duration::from_micros(i * 1000));
        }
        let l = t.latency();
        // 3 significant digits: within 0.1 % of the exact value.
        assert!((l.p50 - 500.0).abs() <= 0.5, "{l:?}");
        assert!((l.p90 - 900.0).abs() <= 0.9, "{l:?}");
        assert!((l.p99 - 990.0).abs() <= 1.0, "{l:?}");
        assert!((l.p999 - 999.0).abs() <= 1.0, "{l:?}");
        assert!((l.max - 1000.0).abs() <= 1.0, "{l:?}");
        assert_eq!(t.requests(), 1000);
    }

    #[test]
    fn microsecond_resolution() {
        let mut t = Tally::new();
        t.record("201".into(), Duration::from_micros(123));
        assert_eq!(t.latency().max, 0.123);
        assert_eq!(t.latency().p50, 0.123);
    }

    #[test]
    fn empty_tally_has_zero_latency() {
        let t = Tally::new();
        assert_eq!(t.latency(), LatencySummary::default());
        assert_eq!(t.requests(), 0);
    }

    #[test]
    fn outcomes_and_merge() {
        let a = [
            answer(Some(201), None, 1),
            answer(Some(409), Some("sold_out"), 2),
            answer(Some(409), Some("sold_out"), 3),
            answer(None, Some("timeout"), 30_000),
        ];
        let mut t = Tally::from_answers(&a[..2]);
        t.merge(&Tally::from_answers(&a[2..]));
        assert_eq!(t.outcomes.get("201"), Some(&1));
        assert_eq!(t.outcomes.get("409:sold_out"), Some(&2));
        assert_eq!(t.outcomes.get("error:timeout"), Some(&1));
        assert_eq!(t.requests(), 4);
        assert!((t.latency().max - 30_000.0).abs() < 30.0);
    }

    #[test]
    fn report_json_has_the_contract_fields() {
        let t = Tally::from_answers(&[
            answer(Some(201), None, 4),
            answer(Some(409), Some("sold_out"), 6),
        ]);
        let r = Report::new(
            Head::new(
                "burst",
                "http://x",
                "lt-1",
                Params::new(vec![("buyers", serde_json::json!(2))]),
            ),
            &t,
            Duration::from_millis(500),
            vec![],
            vec![
                Check::new("a", true, "fine"),
                Check::new("b", false, "broken"),
            ],
        );
        let v: Value = serde_json::from_str(&r.to_json()).expect("json");
        for f in [
            "command",
            "url",
            "sale",
            "requests",
            "wall_ms",
            "throughput_rps",
            "outcomes",
            "latency_ms",
            "checks",
            "ok",
        ] {
            assert!(v.get(f).is_some(), "missing {f}");
        }
        assert_eq!(v["requests"], 2);
        assert_eq!(v["throughput_rps"], 4.0);
        assert_eq!(v["outcomes"]["409:sold_out"], 1);
        assert_eq!(v["ok"], false);
        assert_eq!(v["checks"][1]["name"], "b");
        assert!(v["latency_ms"]["p999"].as_f64().is_some());
        assert!(v.get("phases").is_none());
        let table = r.to_table();
        assert!(table.contains("[FAIL] b"));
        assert!(table.contains("result: FAILED (1 of 2 checks violated)"));
        assert!(table.contains("409:sold_out"));
    }

    #[test]
    fn answers_check_names_what_is_not_allowed() {
        let counts = count_outcomes(&[
            answer(Some(201), None, 1),
            answer(Some(409), Some("sold_out"), 1),
            answer(Some(401), Some("unauthorized"), 1),
            answer(None, Some("timeout"), 1),
        ]);
        let c = Check::answers("answers", &counts, &["201", "409:sold_out"]);
        assert!(!c.ok);
        assert_eq!(
            c.detail,
            "unexpected answers (of 4; allowed 201 or 409:sold_out): 401:unauthorized x1, error:timeout x1"
        );
        let c = Check::answers(
            "answers",
            &counts,
            &["201", "409:sold_out", "401:unauthorized", "error:timeout"],
        );
        assert!(c.ok);
        assert_eq!(
            c.detail,
            "all 4 answers are 201, 409:sold_out, 401:unauthorized or error:timeout"
        );
        let empty = Check::answers("confirms", &BTreeMap::new(), &["200"]);
        assert!(
            empty.ok,
            "no answers to check is not a violation: {empty:?}"
        );
    }

    #[test]
    fn params_keep_their_order() {
        let p = Params::new(vec![
            ("zeta", serde_json::json!(1)),
            ("alpha", serde_json::json!({"sale_id": "s", "held": 2})),
        ]);
        assert_eq!(
            serde_json::to_string(&p).expect("json"),
            r#"{"zeta":1,"alpha":{"held":2,"sale_id":"s"}}"#
        );
        let r = Report::new(
            Head::new("burst", "u", "s", p),
            &Tally::new(),
            Duration::ZERO,
            vec![],
            vec![],
        );
        let table = r.to_table();
        let (z, a) = (table.find("zeta"), table.find("alpha"));
        assert!(z < a, "{table}");
        assert!(table.contains("alpha  held 2\n"), "{table}");
    }

    #[test]
    fn report_ok_only_when_every_check_passes() {
        let t = Tally::new();
        let r = Report::new(
            Head::new("flow", "u", "s", Params::default()),
            &t,
            Duration::ZERO,
            vec![Phase::new("reserve", &t, Duration::ZERO)],
            vec![Check::new("a", true, "")],
        );
        assert!(r.ok);
        assert_eq!(r.throughput_rps, 0.0);
        assert!(r.to_table().contains("phase reserve"));
        assert!(r.to_table().contains("result: OK"));
    }
}
