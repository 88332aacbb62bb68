//! Benchmark reports: the result model, and its files: `results.json`, `results.md` (a table per
//! workload) and hand-written SVG charts `throughput.svg` and `latency.svg`.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use anyhow::Context;
use serde::Serialize;

use crate::{
    stats::{Stats, Summary},
    target::{Kind, Target},
};

/// Everything one invocation measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tool: String,
    pub version: String,
    pub started_at: String,
    pub finished_at: String,
    /// The command line, as typed.
    pub command: Vec<String>,
    pub machine: Machine,
    pub sections: Vec<Section>,
}

/// Where the benchmark ran.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub nproc: usize,
    pub mem_total: String,
    pub kernel: String,
    /// The filesystem of `$TMPDIR`, where the benchmarks put data dirs (`scratch_filesystem`).
    pub scratch: String,
}

impl Machine {
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_total = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0))
            .unwrap_or_else(|| "unknown".to_owned());
        Machine {
            cpu_model,
            nproc: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            mem_total,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "unknown".to_owned()),
            scratch: scratch_filesystem(),
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "{} CPUs ({}), {} RAM, Linux {}; data dirs in {}",
            self.nproc, self.cpu_model, self.mem_total, self.kernel, self.scratch
        )
    }
}

/// What `$TMPDIR` (where the benchmarks make their data dirs) is on, e.g. "/tmp: ext4 on
/// /dev/vda, without a journal". Whether ext4 has its journal matters: without one, every file
/// created scans the inodes deleted recently (docs/benchmarks.md), and a Fly volume has one.
pub fn scratch_filesystem() -> String {
    let dir = std::env::temp_dir();
    let dir = dir.canonicalize().unwrap_or(dir);
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let Some(mount) = mount_of(&mountinfo, &dir) else {
        return format!("{}: filesystem unknown", dir.display());
    };
    let journal = if mount.fstype == "ext4" || mount.fstype == "ext3" {
        let dev = mount.source.rsplit('/').next().unwrap_or_default();
        let journaled = std::fs::read_dir("/proc/fs/jbd2")
            .map(|entries| {
                entries
                    .flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with(&format!("{dev}-")))
            })
            .unwrap_or(false);
        if journaled {
            ", with a journal"
        } else {
            ", without a journal"
        }
    } else {
        ""
    };
    format!("{}: {} on {}{journal}", dir.display(), mount.fstype, mount.source)
}

/// A line of `/proc/self/mountinfo`: where, what and from what.
#[derive(Debug, PartialEq, Eq)]
struct Mount {
    point: String,
    fstype: String,
    source: String,
}

/// The mount `path` lies on: the one with the longest mount point above it (the last mounted
/// wins a tie, as the kernel's view does).
fn mount_of(mountinfo: &str, path: &std::path::Path) -> Option<Mount> {
    let mut best: Option<Mount> = None;
    for line in mountinfo.lines() {
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        let Some(point) = before.split(' ').nth(4) else {
            continue;
        };
        let mut rest = after.split(' ');
        let (Some(fstype), Some(source)) = (rest.next(), rest.next()) else {
            continue;
        };
        // Spaces and the like are octal escapes (`\040`).
        let point = point.replace("\\040", " ");
        if !path.starts_with(&point) {
            continue;
        }
        if best.as_ref().is_none_or(|b| point.len() >= b.point.len()) {
            best = Some(Mount {
                point,
                fstype: fstype.to_owned(),
                source: source.to_owned(),
            });
        }
    }
    best
}

/// One group of workloads measured with the same settings.
#[derive(Debug, Clone, Serialize)]
pub struct Section {
    pub name: String,
    pub title: String,
    pub settings: serde_json::Value,
    pub workloads: Vec<WorkloadResult>,
    /// Ratios between named targets (compare-nginx: Perch / nginx).
    pub comparisons: Vec<Comparison>,
    pub notes: Vec<String>,
}

/// One workload's figures for every target.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadResult {
    pub name: String,
    pub description: String,
    pub concurrency: usize,
    pub targets: Vec<TargetResult>,
}

impl WorkloadResult {
    pub fn new(name: &str, description: &str, concurrency: usize, mut targets: Vec<TargetResult>) -> WorkloadResult {
        let first = targets.first().map(|t| t.summary.ops_per_sec).unwrap_or(0.0);
        for t in &mut targets {
            t.vs_first = (first > 0.0).then(|| t.summary.ops_per_sec / first);
        }
        WorkloadResult {
            name: name.to_owned(),
            description: description.to_owned(),
            concurrency,
            targets,
        }
    }

    pub fn target(&self, name: &str) -> Option<&TargetResult> {
        self.targets.iter().find(|t| t.target == name)
    }
}

/// One target's figures in one workload.
#[derive(Debug, Clone, Serialize)]
pub struct TargetResult {
    pub target: String,
    pub url: String,
    pub kind: Kind,
    #[serde(flatten)]
    pub summary: Summary,
    /// Cache hits / (hits + misses): from Perch's metrics when it exports them, else from
    /// `X-Cache` response headers; `null` when neither is available.
    pub hit_ratio: Option<f64>,
    pub hits: Option<u64>,
    pub misses: Option<u64>,
    pub hit_source: Option<String>,
    /// Responses by HTTP status (0: no response).
    pub statuses: BTreeMap<String, u64>,
    pub error_samples: Vec<String>,
    /// ops/s relative to the workload's first target.
    pub vs_first: Option<f64>,
}

impl TargetResult {
    pub fn new(target: &Target, stats: &Stats, metric_counts: Option<(u64, u64)>) -> TargetResult {
        let (hits, misses, source) = match metric_counts {
            Some((h, m)) => (Some(h), Some(m), Some("perch-metrics")),
            None if stats.header_hits + stats.header_misses > 0 => {
                (Some(stats.header_hits), Some(stats.header_misses), Some("x-cache"))
            }
            None => (None, None, None),
        };
        let hit_ratio = match (hits, misses) {
            (Some(h), Some(m)) if h + m > 0 => Some(h as f64 / (h + m) as f64),
            _ => None,
        };
        TargetResult {
            target: target.name.clone(),
            url: target.url.clone(),
            kind: target.kind,
            summary: stats.summary(),
            hit_ratio,
            hits,
            misses,
            hit_source: source.map(str::to_owned),
            statuses: stats.statuses.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            error_samples: stats.error_samples.clone(),
            vs_first: None,
        }
    }
}

/// `numerator / denominator` for one workload.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub workload: String,
    pub numerator: String,
    pub denominator: String,
    pub ops_ratio: Option<f64>,
    pub mb_ratio: Option<f64>,
    /// Latency ratios: below 1 means the numerator is faster.
    pub p50_ratio: Option<f64>,
    pub p99_ratio: Option<f64>,
}

impl Comparison {
    pub fn between(w: &WorkloadResult, numerator: &str, denominator: &str) -> Option<Comparison> {
        let a = w.target(numerator)?;
        let b = w.target(denominator)?;
        let ratio = |x: f64, y: f64| (y > 0.0).then(|| x / y);
        Some(Comparison {
            workload: w.name.clone(),
            numerator: numerator.to_owned(),
            denominator: denominator.to_owned(),
            ops_ratio: ratio(a.summary.ops_per_sec, b.summary.ops_per_sec),
            mb_ratio: ratio(a.summary.mb_per_sec, b.summary.mb_per_sec),
            p50_ratio: ratio(a.summary.latency_ms.p50, b.summary.latency_ms.p50),
            p99_ratio: ratio(a.summary.latency_ms.p99, b.summary.latency_ms.p99),
        })
    }
}

impl Report {
    /// Total failed requests over every section.
    pub fn errors(&self) -> u64 {
        self.sections
            .iter()
            .flat_map(|s| &s.workloads)
            .flat_map(|w| &w.targets)
            .map(|t| t.summary.errors)
            .sum()
    }

    /// Writes `results.json`, `results.md`, `throughput.svg` and `latency.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(dir.join("results.json"), json + "\n")?;
        std::fs::write(dir.join("results.md"), self.markdown())?;
        std::fs::write(dir.join("throughput.svg"), self.svg(Chart::Throughput))?;
        std::fs::write(dir.join("latency.svg"), self.svg(Chart::Latency))?;
        Ok(())
    }

    /// The Markdown report: per section its settings, a table per workload, and the comparisons.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# perch-bench results\n");
        let _ = writeln!(md, "- command: `{}`", self.command.join(" "));
        let _ = writeln!(md, "- machine: {}", self.machine.describe());
        let _ = writeln!(md, "- started {}, finished {}", self.started_at, self.finished_at);
        let _ = writeln!(
            md,
            "- MB/s counts request and response bodies (10^6 bytes); latencies are milliseconds from connect \
             (or pool checkout) to the last body byte, successful requests only\n"
        );
        for s in &self.sections {
            let _ = writeln!(md, "## {}\n", s.title);
            if let Some(obj) = s.settings.as_object() {
                let settings: Vec<String> = obj.iter().map(|(k, v)| format!("{k}={}", flat(v))).collect();
                let _ = writeln!(md, "Settings: {}\n", settings.join(", "));
            }
            for n in &s.notes {
                let _ = writeln!(md, "- {n}");
            }
            if !s.notes.is_empty() {
                md.push('\n');
            }
            for w in &s.workloads {
                md.push_str(&workload_table(w));
            }
            if !s.comparisons.is_empty() {
                let _ = writeln!(md, "### Ratios\n");
                let _ = writeln!(md, "| workload | ratio | ops/s | MB/s | p50 latency | p99 latency |");
                let _ = writeln!(md, "|---|---|---:|---:|---:|---:|");
                for c in &s.comparisons {
                    let _ = writeln!(
                        md,
                        "| {} | {} / {} | {} | {} | {} | {} |",
                        c.workload,
                        c.numerator,
                        c.denominator,
                        ratio(c.ops_ratio),
                        ratio(c.mb_ratio),
                        ratio(c.p50_ratio),
                        ratio(c.p99_ratio)
                    );
                }
                md.push('\n');
            }
        }
        md
    }

    fn svg(&self, chart: Chart) -> String {
        let mut names: Vec<&str> = Vec::new();
        for t in self.sections.iter().flat_map(|s| &s.workloads).flat_map(|w| &w.targets) {
            if !names.contains(&t.target.as_str()) {
                names.push(&t.target);
            }
        }
        let groups: Vec<(String, &WorkloadResult)> = self
            .sections
            .iter()
            .flat_map(|s| {
                s.workloads.iter().map(move |w| {
                    let title = if self.sections.len() > 1 {
                        format!("{} · {}", s.name, w.name)
                    } else {
                        w.name.clone()
                    };
                    (title, w)
                })
            })
            .collect();
        render_svg(chart, &names, &groups)
    }
}

/// One workload's Markdown table.
pub fn workload_table(w: &WorkloadResult) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "### {} (concurrency {})\n", w.name, w.concurrency);
    if !w.description.is_empty() {
        let _ = writeln!(md, "{}\n", w.description);
    }
    let _ = writeln!(
        md,
        "| target | ops/s | MB/s | p50 ms | p90 ms | p99 ms | max ms | errors | hit ratio | vs first |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for t in &w.targets {
        let s = &t.summary;
        let hit = match (t.hit_ratio, &t.hit_source) {
            (Some(r), Some(src)) => format!("{:.1}% ({src})", r * 100.0),
            _ => "n/a".to_owned(),
        };
        let _ = writeln!(
            md,
            "| {} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} |",
            t.target,
            s.ops_per_sec,
            s.mb_per_sec,
            s.latency_ms.p50,
            s.latency_ms.p90,
            s.latency_ms.p99,
            s.latency_ms.max,
            s.errors,
            hit,
            ratio(t.vs_first)
        );
    }
    md.push('\n');
    for t in w.targets.iter().filter(|t| !t.error_samples.is_empty()) {
        let _ = writeln!(md, "Errors on {}: {}\n", t.target, t.error_samples.join("; "));
    }
    md
}

fn ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "n/a".to_owned(), |r| format!("{r:.2}×"))
}

fn flat(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Chart {
    Throughput,
    Latency,
}

const PALETTE: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Horizontal bars grouped by workload, each group scaled to its own largest value (workloads
/// differ by orders of magnitude; the comparison that matters is between targets in a group).
fn render_svg(chart: Chart, names: &[&str], groups: &[(String, &WorkloadResult)]) -> String {
    const W: f64 = 960.0;
    const LABEL: f64 = 150.0;
    const BAR: f64 = 500.0;
    const ROW: f64 = 18.0;
    const HEAD: f64 = 24.0;
    let title = match chart {
        Chart::Throughput => "Throughput per target (ops/s; bar length relative within each workload)",
        Chart::Latency => {
            "Latency per target (bar: p50, lighter: to p90, whisker: p99; ms, relative within each workload)"
        }
    };
    let rows: usize = groups.iter().map(|(_, w)| w.targets.len()).sum();
    let height = 60.0 + groups.len() as f64 * (HEAD + 8.0) + rows as f64 * ROW + 20.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" viewBox="0 0 {W} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="10" y="20" font-size="14" font-weight="bold">{}</text>"#,
        esc(title)
    );
    // Legend.
    let mut x = 10.0;
    for (i, n) in names.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let _ = writeln!(svg, r#"<rect x="{x}" y="30" width="12" height="12" fill="{color}"/>"#);
        let _ = writeln!(svg, r#"<text x="{}" y="40">{}</text>"#, x + 16.0, esc(n));
        x += 24.0 + 7.5 * n.len() as f64;
    }
    let mut y = 60.0;
    for (title, w) in groups {
        let _ = writeln!(
            svg,
            r#"<text x="10" y="{}" font-weight="bold">{} (concurrency {})</text>"#,
            y + 16.0,
            esc(title),
            w.concurrency
        );
        y += HEAD;
        let max = w
            .targets
            .iter()
            .map(|t| match chart {
                Chart::Throughput => t.summary.ops_per_sec,
                Chart::Latency => t.summary.latency_ms.p99,
            })
            .fold(0.0f64, f64::max);
        let scale = if max > 0.0 { BAR / max } else { 0.0 };
        for t in &w.targets {
            let i = names.iter().position(|n| *n == t.target).unwrap_or(0);
            let color = PALETTE[i % PALETTE.len()];
            let s = &t.summary;
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
                LABEL - 6.0,
                y + 13.0,
                esc(&t.target)
            );
            let label = match chart {
                Chart::Throughput => {
                    let len = s.ops_per_sec * scale;
                    let _ = writeln!(
                        svg,
                        r#"<rect x="{LABEL}" y="{}" width="{len:.1}" height="{}" fill="{color}"/>"#,
                        y + 2.0,
                        ROW - 4.0
                    );
                    format!("{:.1} op/s, {:.1} MB/s", s.ops_per_sec, s.mb_per_sec)
                }
                Chart::Latency => {
                    let (p50, p90, p99) = (
                        s.latency_ms.p50 * scale,
                        s.latency_ms.p90 * scale,
                        s.latency_ms.p99 * scale,
                    );
                    let _ = writeln!(
                        svg,
                        r#"<rect x="{LABEL}" y="{}" width="{p90:.1}" height="{}" fill="{color}" fill-opacity="0.35"/>"#,
                        y + 2.0,
                        ROW - 4.0
                    );
                    let _ = writeln!(
                        svg,
                        r#"<rect x="{LABEL}" y="{}" width="{p50:.1}" height="{}" fill="{color}"/>"#,
                        y + 2.0,
                        ROW - 4.0
                    );
                    let _ = writeln!(
                        svg,
                        r#"<line x1="{:.1}" y1="{}" x2="{:.1}" y2="{}" stroke="{color}" stroke-width="1.5"/>"#,
                        LABEL + p90,
                        y + ROW / 2.0,
                        LABEL + p99,
                        y + ROW / 2.0
                    );
                    let _ = writeln!(
                        svg,
                        r#"<line x1="{:.1}" y1="{}" x2="{:.1}" y2="{}" stroke="{color}" stroke-width="1.5"/>"#,
                        LABEL + p99,
                        y + 3.0,
                        LABEL + p99,
                        y + ROW - 3.0
                    );
                    format!(
                        "p50 {:.2} / p90 {:.2} / p99 {:.2} ms",
                        s.latency_ms.p50, s.latency_ms.p90, s.latency_ms.p99
                    )
                }
            };
            let errors = if s.errors > 0 {
                format!(" ({} errors)", s.errors)
            } else {
                String::new()
            };
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="{}">{}{}</text>"#,
                LABEL + BAR + 10.0,
                y + 13.0,
                esc(&label),
                esc(&errors)
            );
            y += ROW;
        }
        y += 8.0;
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Outcome;
    use std::time::Duration;

    #[test]
    fn the_mount_of_a_path_is_the_deepest_above_it() {
        let info = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
30 22 0:26 / /tmp/ram rw - tmpfs tmpfs rw,size=1024k
41 22 7:0 / /mnt/perch\\040vol rw,relatime shared:9 - ext4 /dev/loop0 rw
42 22 7:1 / /mnt/perch rw,relatime - ext4 /dev/loop1 rw
";
        let at = |p: &str| mount_of(info, std::path::Path::new(p)).map(|m| (m.fstype, m.source));
        assert_eq!(at("/tmp/x"), Some(("ext4".into(), "/dev/vda".into())));
        assert_eq!(at("/tmp/ram/x"), Some(("tmpfs".into(), "tmpfs".into())));
        // A mount point is a whole path component: /tmp/ramdisk is not under /tmp/ram.
        assert_eq!(at("/tmp/ramdisk"), Some(("ext4".into(), "/dev/vda".into())));
        assert_eq!(at("/mnt/perch vol/tmp"), Some(("ext4".into(), "/dev/loop0".into())));
        assert_eq!(at("/mnt/perch/tmp"), Some(("ext4".into(), "/dev/loop1".into())));
        assert_eq!(mount_of("garbage\n", std::path::Path::new("/")), None);
    }

    fn result(name: &str, ops: u64) -> TargetResult {
        let target = Target::new(name, "127.0.0.1:9".parse().unwrap(), "bench", Kind::S3);
        let mut stats = Stats::default();
        for i in 0..ops {
            stats.record(&Outcome {
                status: 200,
                latency: Duration::from_millis(i + 1),
                ttfb: Duration::from_millis(i + 1),
                bytes_up: 0,
                bytes_down: 1000,
                cache: None,
                error: None,
            });
        }
        stats.elapsed = Duration::from_secs(1);
        TargetResult::new(&target, &stats, None)
    }

    #[test]
    fn renders_every_format() {
        let w = WorkloadResult::new("hot", "GETs <hits>", 4, vec![result("perch", 10), result("origin", 5)]);
        assert_eq!(w.targets[1].vs_first, Some(0.5));
        let cmp = Comparison::between(&w, "perch", "origin").unwrap();
        assert_eq!(cmp.ops_ratio, Some(2.0));
        let report = Report {
            tool: "perch-bench".into(),
            version: "0".into(),
            started_at: "a".into(),
            finished_at: "b".into(),
            command: vec!["perch-bench".into(), "run".into()],
            machine: Machine::detect(),
            sections: vec![Section {
                name: "run".into(),
                title: "Run".into(),
                settings: serde_json::json!({"rounds": 2}),
                workloads: vec![w],
                comparisons: vec![cmp],
                notes: vec![],
            }],
        };
        let md = report.markdown();
        assert!(md.contains("| perch | 10.0 |"), "{md}");
        assert!(md.contains("| origin | 5.0 |"), "{md}");
        assert!(md.contains("0.50×"), "{md}");
        assert!(md.contains("n/a"), "{md}");
        let svg = report.svg(Chart::Latency);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(report.svg(Chart::Throughput).contains("10.0 op/s"));
        let dir = tempfile::tempdir().unwrap();
        report.write(dir.path()).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("results.json")).unwrap()).unwrap();
        assert_eq!(json["sections"][0]["workloads"][0]["targets"][0]["ops"], 10);
        assert_eq!(report.errors(), 0);
    }
}
