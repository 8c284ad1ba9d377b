//! Collects figures per (scenario, metric, mirror) over all runs and renders one markdown
//! table of medians with the berth/proxy ratio, plus free-form notes.

use std::fmt::Write as _;

use crate::processes::MirrorKind;

/// Which way is good, printed so the ratio column can be read at a glance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

#[derive(Clone, Debug)]
pub enum Value {
    Num(f64),
    Text(String),
}

struct Row {
    scenario: &'static str,
    metric: String,
    better: Option<Better>,
    decimals: usize,
    berth: Vec<Value>,
    proxy: Vec<Value>,
}

impl Row {
    fn values(&mut self, mirror: MirrorKind) -> &mut Vec<Value> {
        match mirror {
            MirrorKind::Berth => &mut self.berth,
            MirrorKind::Proxy => &mut self.proxy,
        }
    }
}

#[derive(Default)]
pub struct Report {
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Report {
    /// Records one run's number; `decimals` is how it is printed.
    pub fn num(
        &mut self,
        scenario: &'static str,
        metric: &str,
        better: Option<Better>,
        decimals: usize,
        mirror: MirrorKind,
        value: f64,
    ) {
        self.row(scenario, metric, better, decimals)
            .values(mirror)
            .push(Value::Num(value));
    }

    /// Records one run's textual outcome (e.g. "ok", "error after 100.0 MiB: …").
    pub fn text(
        &mut self,
        scenario: &'static str,
        metric: &str,
        mirror: MirrorKind,
        value: String,
    ) {
        self.row(scenario, metric, None, 0)
            .values(mirror)
            .push(Value::Text(value));
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    fn row(
        &mut self,
        scenario: &'static str,
        metric: &str,
        better: Option<Better>,
        decimals: usize,
    ) -> &mut Row {
        let i = match self
            .rows
            .iter()
            .position(|r| r.scenario == scenario && r.metric == metric)
        {
            Some(i) => i,
            None => {
                self.rows.push(Row {
                    scenario,
                    metric: metric.to_string(),
                    better,
                    decimals,
                    berth: Vec::new(),
                    proxy: Vec::new(),
                });
                self.rows.len() - 1
            }
        };
        &mut self.rows[i]
    }

    pub fn to_markdown(&self, title: &str) -> String {
        let mut md = format!("## {title}\n\n");
        md += "| scenario | metric | berth | distribution proxy | berth / proxy | better |\n";
        md += "|---|---|---:|---:|---:|---|\n";
        let mut rows: Vec<&Row> = self.rows.iter().collect();
        rows.sort_by_key(|r| r.scenario); // stable: metrics keep their order within a scenario
        for r in rows {
            let (b, p) = (median(&r.berth), median(&r.proxy));
            let ratio = match (b, p) {
                (Some(b), Some(p)) if p != 0.0 => format!("{:.2}×", b / p),
                _ => "—".into(),
            };
            let better = match r.better {
                Some(Better::Higher) => "higher",
                Some(Better::Lower) => "lower",
                None => "",
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {ratio} | {better} |",
                r.scenario,
                r.metric,
                cell(&r.berth, r.decimals),
                cell(&r.proxy, r.decimals)
            );
        }
        if !self.notes.is_empty() {
            md += "\n";
            for n in &self.notes {
                let _ = writeln!(md, "- {n}");
            }
        }
        md
    }
}

fn numbers(values: &[Value]) -> Vec<f64> {
    values
        .iter()
        .filter_map(|v| match v {
            Value::Num(n) => Some(*n),
            Value::Text(_) => None,
        })
        .collect()
}

fn median(values: &[Value]) -> Option<f64> {
    let mut nums = numbers(values);
    (!nums.is_empty()).then(|| median_of(&mut nums))
}

/// The median (mean of the middle two for an even count).
pub fn median_of(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// The `q`-quantile (0..=1) by nearest rank.
pub fn quantile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

/// Median over runs, with every run's figure in brackets when there was more than one;
/// text outcomes are listed per run.
fn cell(values: &[Value], decimals: usize) -> String {
    if values.is_empty() {
        return "—".into();
    }
    let texts: Vec<String> = values
        .iter()
        .map(|v| match v {
            Value::Num(n) => format!("{n:.decimals$}"),
            Value::Text(t) => t.clone(),
        })
        .collect();
    match median(values) {
        Some(m) if values.len() > 1 => format!("**{m:.decimals$}** ({})", texts.join(", ")),
        Some(m) => format!("**{m:.decimals$}**"),
        None => texts.join(" / "),
    }
}
