//! Output of the benchmark: a terminal table, JSON lines, and a report directory with one
//! hand-written SVG bar chart per scenario and a Markdown summary.
//!
//! A report directory accumulates: each run appends its results to `results.jsonl`, then every
//! chart and `results.md` is redrawn from all results there, one bar per server label. That is
//! how `bench/compare.sh` puts many servers side by side. No plotting library is used.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use crate::bench::stats::{Metric, ScenarioResult};

const CHART_WIDTH: f64 = 760.0;
const LABEL_WIDTH: f64 = 190.0;
const VALUE_WIDTH: f64 = 130.0;
const ROW: f64 = 22.0;

/// A fixed-width table of results, one line per metric.
pub fn table(results: &[ScenarioResult]) -> String {
    let mut out = format!(
        "{:<20} {:<14} {:<26} {:>14} {}\n",
        "server", "scenario", "metric", "value", "unit"
    );
    for r in results {
        for m in &r.metrics {
            let _ = writeln!(
                out,
                "{:<20} {:<14} {:<26} {:>14} {}",
                r.label,
                r.scenario,
                m.name,
                format_value(m.value),
                m.unit
            );
        }
        for note in &r.notes {
            let _ = writeln!(out, "{:<20} {:<14} note: {note}", r.label, r.scenario);
        }
    }
    out
}

/// One JSON object per line.
pub fn json_line(result: &ScenarioResult) -> String {
    serde_json::to_string(result).expect("results serialize")
}

/// A number with a sensible number of digits.
pub fn format_value(v: f64) -> String {
    if v.abs() >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Appends `results` to `dir/results.jsonl`, then redraws every chart and `results.md`.
pub fn write_report(dir: &Path, results: &[ScenarioResult], params: &str) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let path = dir.join("results.jsonl");
    let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
    for r in results {
        writeln!(file, "{}", json_line(r))?;
    }
    let all = read_results(&path)?;
    for (scenario, rows) in by_scenario(&all) {
        fs::write(dir.join(format!("{scenario}.svg")), svg_chart(&scenario, &rows))?;
    }
    fs::write(dir.join("results.md"), format!("Last run: `{params}`\n\n{}", markdown(&all)))
}

/// Every result in a JSON-lines file; a later result for the same label and scenario replaces
/// an earlier one.
pub fn read_results(path: &Path) -> io::Result<Vec<ScenarioResult>> {
    let text = fs::read_to_string(path)?;
    let mut out: Vec<ScenarioResult> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let r: ScenarioResult = serde_json::from_str(line)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        out.retain(|o| !(o.label == r.label && o.scenario == r.scenario));
        out.push(r);
    }
    Ok(out)
}

/// Results grouped by scenario, in first-seen order of labels.
fn by_scenario(all: &[ScenarioResult]) -> BTreeMap<String, Vec<&ScenarioResult>> {
    let mut map: BTreeMap<String, Vec<&ScenarioResult>> = BTreeMap::new();
    for r in all {
        map.entry(r.scenario.clone()).or_default().push(r);
    }
    map
}

/// Markdown: per scenario, a table with one row per server and one column per metric.
pub fn markdown(all: &[ScenarioResult]) -> String {
    let mut out = String::new();
    for (scenario, rows) in by_scenario(all) {
        let metrics = metric_names(&rows);
        let _ = writeln!(out, "### {scenario}\n");
        if metrics.is_empty() {
            let notes = rows.iter().map(|r| format!("{}: {}", r.label, r.notes.join("; ")));
            let _ = writeln!(out, "{}\n", notes.collect::<Vec<_>>().join("\n\n"));
            continue;
        }
        let header: Vec<String> = metrics.iter().map(|(n, u)| format!("{n} ({u})")).collect();
        let _ = writeln!(out, "| server | {} |", header.join(" | "));
        let _ = writeln!(out, "|---|{}", "---:|".repeat(metrics.len()));
        for r in &rows {
            let cells: Vec<String> = metrics
                .iter()
                .map(|(n, _)| find(r, n).map_or("-".into(), |m| format_value(m.value)))
                .collect();
            let _ = writeln!(out, "| {} | {} |", r.label, cells.join(" | "));
        }
        for r in rows.iter().filter(|r| !r.notes.is_empty()) {
            let _ = writeln!(out, "\n{}: {}", r.label, r.notes.join("; "));
        }
        let _ = writeln!(out, "\n![{scenario}]({scenario}.svg)\n");
    }
    out
}

fn metric_names(rows: &[&ScenarioResult]) -> Vec<(String, String)> {
    let mut names: Vec<(String, String)> = Vec::new();
    for m in rows.iter().flat_map(|r| &r.metrics) {
        if !names.iter().any(|(n, _)| *n == m.name) {
            names.push((m.name.clone(), m.unit.clone()));
        }
    }
    names
}

fn find<'a>(r: &'a ScenarioResult, name: &str) -> Option<&'a Metric> {
    r.metrics.iter().find(|m| m.name == name)
}

/// A horizontal bar chart: one group per metric, one bar per server, each group scaled to its
/// own largest value.
pub fn svg_chart(title: &str, rows: &[&ScenarioResult]) -> String {
    let metrics = metric_names(rows);
    let height = 40.0 + metrics.len() as f64 * (ROW * (rows.len() as f64 + 1.0) + 10.0);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{CHART_WIDTH}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"22\" font-size=\"16\" font-weight=\"bold\">{}</text>\n",
        escape(title)
    );
    let mut y = 40.0;
    for (name, unit) in &metrics {
        y = svg_group(&mut svg, rows, name, unit, y);
    }
    svg.push_str("</svg>\n");
    svg
}

/// Draws one metric's group of bars starting at `y`; returns the next free `y`.
fn svg_group(svg: &mut String, rows: &[&ScenarioResult], name: &str, unit: &str, y: f64) -> f64 {
    let better = rows.iter().find_map(|r| find(r, name)).map_or("", |m| {
        if m.higher_is_better {
            "higher is better"
        } else {
            "lower is better"
        }
    });
    let _ = writeln!(
        svg,
        "<text x=\"10\" y=\"{:.0}\" font-weight=\"bold\">{} ({}; {better})</text>",
        y + 14.0,
        escape(name),
        escape(unit)
    );
    let max = rows.iter().filter_map(|r| find(r, name)).map(|m| m.value).fold(0.0_f64, f64::max);
    let span = CHART_WIDTH - LABEL_WIDTH - VALUE_WIDTH;
    let mut y = y + ROW;
    for r in rows {
        let value = find(r, name).map(|m| m.value);
        let width = match value {
            Some(v) if max > 0.0 => (v.max(0.0) / max * span).max(1.0),
            _ => 0.0,
        };
        let shown = value.map_or("-".into(), format_value);
        let _ = writeln!(
            svg,
            "<text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"end\">{}</text>\
             <rect x=\"{LABEL_WIDTH}\" y=\"{:.0}\" width=\"{width:.1}\" height=\"{:.0}\" \
             fill=\"#4a7ab5\"/><text x=\"{:.0}\" y=\"{:.0}\">{shown}</text>",
            LABEL_WIDTH - 6.0,
            y + 15.0,
            escape(&r.label),
            y + 3.0,
            ROW - 6.0,
            LABEL_WIDTH + width + 6.0,
            y + 15.0
        );
        y += ROW;
    }
    y + 10.0
}

/// Escapes text for XML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(label: &str, value: f64) -> ScenarioResult {
        ScenarioResult {
            label: label.into(),
            scenario: "logins".into(),
            metrics: vec![
                Metric::higher("logins", value, "logins/s"),
                Metric::lower("p99 <latency>", value / 10.0, "ms"),
            ],
            notes: vec![],
        }
    }

    /// A tiny XML well-formedness check: tags balance and every `&` starts an entity.
    fn assert_well_formed(svg: &str) {
        let mut stack: Vec<String> = Vec::new();
        let mut rest = svg;
        while let Some(start) = rest.find('<') {
            let end = rest[start..].find('>').expect("unclosed tag") + start;
            let tag = &rest[start + 1..end];
            assert!(!tag.contains('<'), "nested < in {tag}");
            let name: String =
                tag.trim_start_matches('/').chars().take_while(|c| c.is_alphanumeric()).collect();
            if tag.starts_with('/') {
                assert_eq!(stack.pop().as_deref(), Some(name.as_str()));
            } else if !tag.ends_with('/') {
                stack.push(name);
            }
            let text = &rest[end + 1..];
            let next = text.find('<').unwrap_or(text.len());
            for (i, _) in text[..next].match_indices('&') {
                assert!(
                    text[i..].starts_with("&lt;")
                        || text[i..].starts_with("&gt;")
                        || text[i..].starts_with("&amp;")
                        || text[i..].starts_with("&quot;")
                        || text[i..].starts_with("&apos;")
                );
            }
            rest = &rest[end + 1..];
        }
        assert!(stack.is_empty(), "unclosed: {stack:?}");
    }

    #[test]
    fn svg_is_well_formed_and_escaped() {
        let a = result("zocalo <epoll>", 400.0);
        let b = result("vsftpd & co", 100.0);
        let svg = svg_chart("logins", &[&a, &b]);
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("zocalo &lt;epoll&gt;"));
        assert!(svg.contains("vsftpd &amp; co"));
        assert_well_formed(&svg);
        // Two metrics, two servers: four bars; the larger value gets the full span.
        assert_eq!(svg.matches("fill=\"#4a7ab5\"").count(), 4);
        assert!(svg.contains(&format!("width=\"{:.1}\"", CHART_WIDTH - LABEL_WIDTH - VALUE_WIDTH)));
    }

    #[test]
    fn svg_with_missing_and_zero_values() {
        let mut a = result("a", 0.0);
        a.metrics.pop();
        let b = result("b", 0.0);
        assert_well_formed(&svg_chart("x", &[&a, &b]));
    }

    #[test]
    fn report_dir_accumulates_and_replaces() {
        let dir = std::env::temp_dir().join(format!("zocalo-report-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        write_report(&dir, &[result("a", 1.0)], "clients=1").unwrap();
        write_report(&dir, &[result("b", 2.0), result("a", 3.0)], "clients=2").unwrap();
        let all = read_results(&dir.join("results.jsonl")).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all.iter().find(|r| r.label == "a").unwrap().metrics[0].value, 3.0);
        let md = fs::read_to_string(dir.join("results.md")).unwrap();
        assert!(md.contains("| a | 3 | 0.300 |"), "{md}");
        assert!(md.starts_with("Last run: `clients=2`"), "the run's parameters: {md}");
        assert_well_formed(&fs::read_to_string(dir.join("logins.svg")).unwrap());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn table_and_json() {
        let r = result("srv", 12.5);
        let t = table(std::slice::from_ref(&r));
        assert!(t.lines().nth(1).unwrap().contains("12.50"));
        let back: ScenarioResult = serde_json::from_str(&json_line(&r)).unwrap();
        assert_eq!(back, r);
    }
}
