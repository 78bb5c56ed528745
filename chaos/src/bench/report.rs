//! The bench report: printed, written as JSON (fields other programs read: transfers_per_sec,
//! requests_per_sec, latency_ms.{p50,p90,p99,p999,max}, errors, conserved, options), and
//! compared with an earlier one.

use super::BenchFlags;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

pub struct Report {
    pub transfers: u64,
    pub requests: u64,
    pub measured: Duration,
    pub latency: Histogram<u64>,
    pub errors: BTreeMap<String, u64>,
    pub conserved: bool,
}

fn millis(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

impl Report {
    pub fn new(
        transfers: u64,
        requests: u64,
        measured: Duration,
        latency: Histogram<u64>,
        errors: BTreeMap<String, u64>,
        conserved: bool,
    ) -> Report {
        Report { transfers, requests, measured, latency, errors, conserved }
    }

    fn seconds(&self) -> f64 {
        self.measured.as_secs_f64().max(1e-9)
    }

    pub fn transfers_per_sec(&self) -> f64 {
        self.transfers as f64 / self.seconds()
    }

    pub fn requests_per_sec(&self) -> f64 {
        self.requests as f64 / self.seconds()
    }

    fn quantile_ms(&self, quantile: f64) -> f64 {
        millis(self.latency.value_at_quantile(quantile))
    }

    pub fn latency_json(&self) -> Value {
        json!({
            "p50": self.quantile_ms(0.50),
            "p90": self.quantile_ms(0.90),
            "p99": self.quantile_ms(0.99),
            "p999": self.quantile_ms(0.999),
            "max": millis(self.latency.max()),
            "mean": self.latency.mean() / 1000.0,
        })
    }

    pub fn print(&self) {
        println!();
        println!("transfers/s    {:>12.0}", self.transfers_per_sec());
        println!("requests/s     {:>12.0}", self.requests_per_sec());
        println!("transfers      {:>12}  in {:.1} s", self.transfers, self.seconds());
        println!(
            "latency ms     p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            self.quantile_ms(0.50),
            self.quantile_ms(0.90),
            self.quantile_ms(0.99),
            self.quantile_ms(0.999),
            millis(self.latency.max())
        );
        if self.errors.is_empty() {
            println!("errors         none");
        } else {
            let list: Vec<String> = self.errors.iter().map(|(code, count)| format!("{code} {count}")).collect();
            println!("errors         {}", list.join(", "));
        }
        println!("conservation   {}", if self.conserved { "ok: every bench account adds up" } else { "FAILED" });
    }

    pub fn to_json(&self, flags: &BenchFlags, targets: &[String]) -> Value {
        json!({
            "transfers_per_sec": self.transfers_per_sec(),
            "requests_per_sec": self.requests_per_sec(),
            "latency_ms": self.latency_json(),
            "errors": self.errors,
            "conserved": self.conserved,
            "transfers": self.transfers,
            "requests": self.requests,
            "measured_seconds": self.seconds(),
            "options": flags,
            "targets": targets,
            "version": env!("CARGO_PKG_VERSION"),
        })
    }

    /// Prints new / old for the headline numbers of an earlier report.
    pub fn print_comparison(&self, old: &Value) {
        let number = |value: &Value| value.as_f64().unwrap_or(0.0);
        let rows = [
            ("transfers/s", self.transfers_per_sec(), number(&old["transfers_per_sec"]), true),
            ("requests/s", self.requests_per_sec(), number(&old["requests_per_sec"]), true),
            ("p50 ms", self.quantile_ms(0.50), number(&old["latency_ms"]["p50"]), false),
            ("p99 ms", self.quantile_ms(0.99), number(&old["latency_ms"]["p99"]), false),
            ("p99.9 ms", self.quantile_ms(0.999), number(&old["latency_ms"]["p999"]), false),
            ("max ms", millis(self.latency.max()), number(&old["latency_ms"]["max"]), false),
        ];
        println!();
        println!("{:<12} {:>12} {:>12} {:>8}", "", "old", "new", "new/old");
        for (name, new, old, higher_is_better) in rows {
            let ratio = if old > 0.0 { new / old } else { f64::NAN };
            let verdict = if ratio.is_nan() {
                ""
            } else if (ratio > 1.05) == higher_is_better && (ratio - 1.0).abs() > 0.05 {
                "better"
            } else if (ratio - 1.0).abs() > 0.05 {
                "worse"
            } else {
                "same"
            };
            println!("{name:<12} {old:>12.2} {new:>12.2} {ratio:>8.2} {verdict}");
        }
    }
}
