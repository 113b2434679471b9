//! Reports of a run after the fact, from the rendezvous' [`TaskReport`]s: `--trace FILE.json`
//! in the Chrome trace event format (Perfetto and chrome://tracing open it), and `--timings
//! FILE.html`, a self-contained page in the manner of `cargo build --timings`: a time line per
//! node, the critical path, the slowest thunks and the bytes on each edge of the graph.
//!
//! Times are the rendezvous' (from assignment to the node's report), in milliseconds since the
//! job's planning began. An edge is a thunk's input that another thunk of the job made; the
//! consumer's report says where its bytes came from.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use thunkmesh_protocol::Ref;
use thunkmesh_protocol::job::ResolvedJob;
use thunkmesh_protocol::wire::TaskReport;

/// A task placed on its node's lane (a node runs as many tasks at once as it has slots).
#[derive(Debug, Clone, Copy)]
struct Placed<'a> {
    task: &'a TaskReport,
    /// The node's index, in order of first appearance.
    node: usize,
    lane: usize,
}

/// An input of one thunk that another thunk of the job made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    /// The thunk that made it.
    pub from: String,
    /// The thunk that read it.
    pub to: String,
    /// Its size.
    pub bytes: u64,
    /// `local`, `peer NODE` or `storage`.
    pub via: String,
}

/// What the reports are drawn from.
#[derive(Debug)]
pub struct Timeline<'a> {
    tasks: Vec<Placed<'a>>,
    nodes: Vec<&'a str>,
    lanes: Vec<usize>,
    edges: Vec<Edge>,
    critical: Vec<&'a TaskReport>,
}

impl<'a> Timeline<'a> {
    /// Lays out `tasks` (in any order) and finds the edges and the critical path through `job`.
    pub fn new(tasks: &'a [TaskReport], job: &ResolvedJob) -> Timeline<'a> {
        let mut sorted: Vec<&TaskReport> = tasks.iter().collect();
        sorted.sort_by_key(|t| (t.started_ms, t.ended_ms));
        let mut nodes: Vec<&str> = Vec::new();
        let mut ends: Vec<Vec<u64>> = Vec::new();
        let mut placed = Vec::with_capacity(sorted.len());
        for task in sorted {
            let node = nodes.iter().position(|n| *n == task.node).unwrap_or_else(|| {
                nodes.push(&task.node);
                ends.push(Vec::new());
                nodes.len() - 1
            });
            let lanes = &mut ends[node];
            let lane = lanes.iter().position(|&end| end <= task.started_ms).unwrap_or_else(|| {
                lanes.push(0);
                lanes.len() - 1
            });
            lanes[lane] = task.ended_ms;
            placed.push(Placed { task, node, lane });
        }
        let lanes = ends.iter().map(|l| l.len().max(1)).collect();
        let done = last_successes(tasks);
        let edges = edges(&done, job);
        let critical = critical_path(&done, &edges);
        Timeline { tasks: placed, nodes, lanes, edges, critical }
    }

    /// The edges, the most bytes first.
    pub fn edges(&self) -> &[Edge] {
        &self.edges
    }

    /// The names on the critical path, first to last.
    pub fn critical_path(&self) -> Vec<&str> {
        self.critical.iter().map(|t| t.name.as_str()).collect()
    }

    /// The trace, in the Chrome trace event format: one process per node, one thread per lane,
    /// one complete event per task.
    pub fn trace_json(&self) -> serde_json::Value {
        let names = self.nodes.iter().enumerate().map(|(pid, node)| {
            serde_json::json!({ "name": "process_name", "ph": "M", "pid": pid + 1, "tid": 0, "args": { "name": node } })
        });
        let events = self.tasks.iter().map(|p| {
            let t = p.task;
            serde_json::json!({
                "name": t.name, "cat": t.program, "ph": "X", "pid": p.node + 1, "tid": p.lane + 1,
                "ts": t.started_ms * 1000, "dur": t.ended_ms.saturating_sub(t.started_ms) * 1000,
                "args": {
                    "ok": t.ok, "why": t.why, "program_ms": t.stats.program_micros as f64 / 1000.0,
                    "peer_bytes": t.stats.peer_bytes, "relay_bytes": t.stats.relay_bytes,
                    "storage_read_bytes": t.stats.storage_bytes_read,
                    "storage_written_bytes": t.stats.storage_bytes_written, "inputs": t.inputs.len(),
                },
            })
        });
        serde_json::json!({ "traceEvents": names.chain(events).collect::<Vec<_>>(), "displayTimeUnit": "ms" })
    }

    /// The `--timings` page: self-contained HTML and SVG, no script.
    pub fn timings_html(&self, title: &str) -> String {
        let mut page = String::new();
        let end = self.tasks.iter().map(|p| p.task.ended_ms).max().unwrap_or(0).max(1);
        let ok = self.tasks.iter().filter(|p| p.task.ok).count();
        let _ = write!(
            page,
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>thunkmesh timings: {title}</title>\
             <style>{STYLE}</style></head><body>\n<h1>thunkmesh timings: {title}</h1>\n<p>{} task(s) ({ok} succeeded) \
             on {} node(s) in {:.3} s. Each bar is a task, from its assignment to its node's report, coloured by \
             program; the critical path is outlined in red.</p>\n",
            self.tasks.len(),
            self.nodes.len(),
            end as f64 / 1000.0,
            title = escape(title),
        );
        self.write_timeline(&mut page, end);
        self.write_critical(&mut page);
        self.write_slowest(&mut page);
        self.write_edges(&mut page);
        page.push_str("</body></html>\n");
        page
    }

    fn write_timeline(&self, page: &mut String, end: u64) {
        const WIDTH: f64 = 1000.0;
        const ROW: usize = 18;
        const LABEL: f64 = 140.0;
        let first_row: Vec<usize> =
            self.lanes.iter().scan(0, |row, lanes| Some(std::mem::replace(row, *row + lanes))).collect();
        let rows: usize = self.lanes.iter().sum();
        let height = rows * ROW + 24;
        let x = |ms: u64| LABEL + ms as f64 / end as f64 * (WIDTH - LABEL);
        let _ = write!(
            page,
            "<h2>Time line</h2>\n<svg class=\"timeline\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" viewBox=\"0 0 {WIDTH} {height}\">\n"
        );
        for (node, name) in self.nodes.iter().enumerate() {
            let y = first_row[node] * ROW;
            let _ = writeln!(page, "<text x=\"4\" y=\"{}\" class=\"node\">{}</text>", y + 13, escape(name));
        }
        let critical: Vec<*const TaskReport> = self.critical.iter().map(|t| std::ptr::from_ref(*t)).collect();
        for p in &self.tasks {
            let t = p.task;
            let y = (first_row[p.node] + p.lane) * ROW + 2;
            let (x0, x1) = (x(t.started_ms), x(t.ended_ms));
            let on_path = critical.contains(&std::ptr::from_ref(t));
            let class = match (t.ok, on_path) {
                (false, _) => " failed",
                (true, true) => " critical",
                (true, false) => "",
            };
            let _ = writeln!(
                page,
                "<rect class=\"task{class}\" x=\"{x0:.1}\" y=\"{y}\" width=\"{:.1}\" height=\"{}\" fill=\"{}\"><title>{} on {} ({}): {} ms, {}</title></rect>",
                (x1 - x0).max(1.0),
                ROW - 4,
                colour(&t.program),
                escape(&t.name),
                escape(&t.node),
                escape(&t.program),
                t.ended_ms.saturating_sub(t.started_ms),
                escape(&t.why),
            );
        }
        let axis = rows * ROW + 16;
        for tick in 0..=4 {
            let ms = end * tick / 4;
            let anchor = ["start", "middle", "middle", "middle", "end"][tick as usize];
            let _ = writeln!(
                page,
                "<text x=\"{:.1}\" y=\"{axis}\" text-anchor=\"{anchor}\" class=\"axis\">{:.2} s</text>",
                x(ms),
                ms as f64 / 1000.0
            );
        }
        page.push_str("</svg>\n");
    }

    fn write_critical(&self, page: &mut String) {
        let total: u64 = self.critical.iter().map(|t| t.ended_ms.saturating_sub(t.started_ms)).sum();
        let _ = writeln!(
            page,
            "<h2>Critical path</h2>\n<p>{} thunk(s), {:.3} s of work one after another:</p>\n<ol class=\"critical\">",
            self.critical.len(),
            total as f64 / 1000.0
        );
        for t in &self.critical {
            let _ = writeln!(
                page,
                "<li>{} ({} ms on {})</li>",
                escape(&t.name),
                t.ended_ms.saturating_sub(t.started_ms),
                escape(&t.node)
            );
        }
        page.push_str("</ol>\n");
    }

    fn write_slowest(&self, page: &mut String) {
        let mut slowest: Vec<&TaskReport> = self.tasks.iter().map(|p| p.task).collect();
        slowest.sort_by_key(|t| std::cmp::Reverse(t.ended_ms.saturating_sub(t.started_ms)));
        page.push_str(
            "<h2>Slowest thunks</h2>\n<table class=\"slowest\"><tr><th>thunk</th><th>program</th><th>node</th>\
             <th>ms</th><th>program ms</th><th>fetched</th><th>why there</th></tr>\n",
        );
        for t in slowest.iter().take(25) {
            let fetched = t.stats.peer_bytes + t.stats.relay_bytes + t.stats.storage_bytes_read;
            let _ = writeln!(
                page,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{}</td></tr>",
                escape(&t.name),
                escape(&t.program),
                escape(&t.node),
                t.ended_ms.saturating_sub(t.started_ms),
                t.stats.program_micros as f64 / 1000.0,
                bytes(fetched),
                escape(&t.why),
            );
        }
        page.push_str("</table>\n");
    }

    fn write_edges(&self, page: &mut String) {
        let mut by_way: BTreeMap<&str, u64> = BTreeMap::new();
        for e in &self.edges {
            *by_way.entry(e.via.split(' ').next().unwrap_or("?")).or_default() += e.bytes;
        }
        let ways: Vec<String> = by_way.iter().map(|(way, b)| format!("{} {way}", bytes(*b))).collect();
        let _ = writeln!(
            page,
            "<h2>Bytes per edge</h2>\n<p>{} edge(s): {}.</p>\n<table class=\"edges\"><tr><th>from</th><th>to</th><th>bytes</th><th>via</th></tr>",
            self.edges.len(),
            if ways.is_empty() { "none".to_owned() } else { ways.join(", ") }
        );
        for e in self.edges.iter().take(50) {
            let _ = writeln!(
                page,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&e.from),
                escape(&e.to),
                bytes(e.bytes),
                escape(&e.via)
            );
        }
        page.push_str("</table>\n");
    }
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse}td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:left;\
white-space:nowrap}td:last-child{white-space:normal}\
svg text{font:11px monospace;fill:#333}rect.task{stroke:#fff;stroke-width:.5}\
rect.critical{stroke:#d00;stroke-width:2}rect.failed{fill:#999;stroke:#000;stroke-dasharray:2}";

/// Each thunk's input that another thunk of `job` made, with the bytes of its last successful
/// task's copy, the most bytes first.
fn edges(done: &BTreeMap<&str, &TaskReport>, job: &ResolvedJob) -> Vec<Edge> {
    let names: HashMap<_, &str> = job.thunks.iter().map(|t| (t.id, t.name.as_str())).collect();
    let thunks: HashMap<&str, _> = job.thunks.iter().map(|t| (t.name.as_str(), &t.thunk)).collect();
    let mut edges = Vec::new();
    for task in done.values() {
        let Some(thunk) = thunks.get(task.name.as_str()) else { continue };
        for (r, (blob, from)) in thunk.refs().zip(&task.inputs) {
            let Ref::Output { thunk: producer, .. } = r else { continue };
            let Some(producer) = names.get(producer) else { continue };
            let via = from.to_string();
            edges.push(Edge { from: (*producer).to_owned(), to: task.name.clone(), bytes: blob.size, via });
        }
    }
    edges.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| (&a.from, &a.to).cmp(&(&b.from, &b.to))));
    edges
}

/// The last successful task of each thunk, by name.
fn last_successes(tasks: &[TaskReport]) -> BTreeMap<&str, &TaskReport> {
    let mut last: BTreeMap<&str, &TaskReport> = BTreeMap::new();
    for t in tasks.iter().filter(|t| t.ok) {
        let later = last.get(t.name.as_str()).is_none_or(|l| l.ended_ms <= t.ended_ms);
        if later {
            last.insert(&t.name, t);
        }
    }
    last
}

/// From the task that ended last, back through the input whose maker ended last, to a thunk
/// with no maker among the job's.
fn critical_path<'a>(done: &BTreeMap<&str, &'a TaskReport>, edges: &[Edge]) -> Vec<&'a TaskReport> {
    let mut makers: HashMap<&str, Vec<&str>> = HashMap::new();
    for e in edges {
        makers.entry(e.to.as_str()).or_default().push(e.from.as_str());
    }
    let mut path = Vec::new();
    let mut at = done.values().max_by_key(|t| (t.ended_ms, std::cmp::Reverse(t.name.as_str()))).copied();
    while let Some(task) = at {
        if path.iter().any(|t: &&TaskReport| t.name == task.name) {
            break;
        }
        path.push(task);
        let inputs = makers.get(task.name.as_str()).into_iter().flatten();
        at = inputs.filter_map(|m| done.get(m).copied()).max_by_key(|t| t.ended_ms);
    }
    path.reverse();
    path
}

/// A steady colour for a program's name.
fn colour(program: &str) -> String {
    let hash = program.bytes().fold(2_166_136_261_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(16_777_619));
    format!("hsl({}, 60%, 55%)", hash % 360)
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / f64::from(1u32 << 30)),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / f64::from(1u32 << 20)),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// `text` safe in HTML text and attributes.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use thunkmesh_protocol::job::NamedThunk;
    use thunkmesh_protocol::wire::{InputFrom, TransferStats};
    use thunkmesh_protocol::{Id, Inputs, Program, Thunk};

    use super::*;

    fn thunk(inputs: &[(&str, Ref)]) -> Thunk {
        let inputs: BTreeMap<String, Ref> = inputs.iter().map(|(p, r)| ((*p).to_owned(), r.clone())).collect();
        Thunk {
            program: Program::Host { path: "/bin/sh".into(), pin: Id::of_blob(b"sh") },
            args: vec![],
            env: Arc::new(BTreeMap::new()),
            inputs: Inputs::from(inputs),
            outputs: vec!["out".into()],
            timeout_ms: 1000,
            network: false,
            stdout: false,
            dir: None,
        }
    }

    fn report(name: &str, node: &str, span: (u64, u64), inputs: Vec<(Id, InputFrom)>) -> TaskReport {
        TaskReport {
            name: name.into(),
            node: node.into(),
            program: "sh".into(),
            started_ms: span.0,
            ended_ms: span.1,
            ok: true,
            why: "because <it> held".into(),
            inputs,
            stats: TransferStats::default(),
        }
    }

    /// a and b feed c; b ends last, so the critical path is b then c.
    #[test]
    fn the_trace_names_every_task_and_the_critical_path_follows_the_maker_that_ended_last() {
        let (a, b) = (thunk(&[]), thunk(&[("x", Ref::Blob(Id::of_blob(b"seed")))]));
        let (a_id, b_id) = (a.id(), b.id());
        let out = |thunk| Ref::Output { thunk, name: "out".into() };
        let c = thunk(&[("a", out(a_id)), ("b", out(b_id))]);
        let job = ResolvedJob {
            thunks: vec![
                NamedThunk { name: "a".into(), id: a_id, thunk: a },
                NamedThunk { name: "b".into(), id: b_id, thunk: b },
                NamedThunk { name: "c".into(), id: c.id(), thunk: c },
            ],
            targets: BTreeMap::new(),
            result: None,
        };
        let blob = |n: usize| Id::blob([1; 32], n as u64);
        let tasks = vec![
            report("a", "n1", (0, 10), vec![]),
            report("b", "n1", (5, 40), vec![(Id::of_blob(b"seed"), InputFrom::Storage)]),
            report("c", "n2", (40, 50), vec![(blob(100), InputFrom::Peer("n1".into())), (blob(7), InputFrom::Local)]),
        ];
        let timeline = Timeline::new(&tasks, &job);
        assert_eq!(timeline.critical_path(), ["b", "c"]);
        assert_eq!(timeline.edges()[0], Edge { from: "a".into(), to: "c".into(), bytes: 100, via: "peer n1".into() });
        let trace = timeline.trace_json();
        let events = trace["traceEvents"].as_array().expect("events");
        let named: Vec<&str> = events.iter().filter(|e| e["ph"] == "X").filter_map(|e| e["name"].as_str()).collect();
        assert_eq!(named, ["a", "b", "c"]);
        let b_event = events.iter().find(|e| e["name"] == "b").expect("b");
        assert_eq!(
            (b_event["tid"].as_u64(), b_event["ts"].as_u64(), b_event["dur"].as_u64()),
            (Some(2), Some(5000), Some(35000))
        );
        let page = timeline.timings_html("job <1>");
        assert!(page.contains("job &lt;1&gt;") && !page.contains("<it>"), "names are escaped");
        assert_eq!(page.matches("class=\"task critical\"").count(), 2);
    }
}
