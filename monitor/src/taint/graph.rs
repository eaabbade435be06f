//! The taint graph in Graphviz's DOT language, and as SVG through `dot`.
//!
//! Nodes are the tainted entries (files, processes, UNIX sockets, INET
//! flows), grouped in one cluster per VM; edges are the events that carried
//! taint (each entry's origin), labelled with the event and its time.
//! Layout is Graphviz's job: this module only writes DOT, with every
//! identifier and label quoted and escaped (names come from the guest and
//! may hold quotes, backslashes, newlines or anything else).

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use monitor_client::taint::Transport;
use monitor_client::taint_report::{Carrier, Subject, TaintedEntry, VmEntry};

use super::alert::rfc3339;
use super::TaintError;

/// `s` as a DOT double-quoted string, quotes included. Within one, `\"` is
/// a quote and a backslash starts an escape in labels (`\n`, `\l`, `\N`, …):
/// backslashes are doubled, and control characters are shown as `<hh>`
/// rather than passed on.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("<{:02x}>", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A label of several lines: each line escaped, joined by DOT's `\n`.
fn label(lines: &[String]) -> String {
    let inner: Vec<String> = lines
        .iter()
        .map(|l| {
            let q = quote(l);
            q[1..q.len() - 1].to_string()
        })
        .collect();
    format!("\"{}\"", inner.join("\\n"))
}

/// A node's identifier: unique across VMs.
fn node_id(vm: &str, s: &Subject) -> String {
    let key = match s {
        Subject::File { dev, ino } => format!("file:{dev}:{ino}"),
        Subject::Process { task, start_time } => format!("proc:{task:#x}:{start_time}"),
        Subject::UnverifiedProcess { pid } => format!("pid:{pid}"),
        Subject::Unix { name } => format!("unix:{name}"),
        Subject::UnixPair { a, b } => format!("unixpair:{a:#x}:{b:#x}"),
        Subject::Flow(f) => format!("flow:{}:{}:{}", transport(f.transport), f.a, f.b),
    };
    quote(&format!("{vm}/{key}"))
}

fn describe(e: &TaintedEntry) -> (Vec<String>, &'static str) {
    let name = e.name.clone();
    match &e.subject {
        Subject::File { dev, ino } => (
            vec![
                name.unwrap_or_else(|| "(file)".into()),
                format!("dev {dev} ino {ino}"),
            ],
            "note",
        ),
        Subject::Process { task, start_time } => (
            vec![
                format!(
                    "{} pid {}",
                    name.unwrap_or_else(|| "?".into()),
                    e.pid.map_or("?".into(), |p| p.to_string())
                ),
                format!("task {task:#x} start {start_time}"),
            ],
            "box",
        ),
        Subject::UnverifiedProcess { pid } => (
            vec![format!("pid {pid} (unverified)"), name.unwrap_or_default()],
            "box",
        ),
        Subject::Unix { name } => (vec!["unix".into(), name.clone()], "hexagon"),
        Subject::UnixPair { a, b } => (
            vec!["unix pair".into(), format!("{a:#x}"), format!("{b:#x}")],
            "hexagon",
        ),
        Subject::Flow(f) => (
            vec![
                transport(f.transport).to_string(),
                f.a.to_string(),
                f.b.to_string(),
            ],
            "diamond",
        ),
    }
}

/// An entry on one line, for people (`monitor taint watch`, alerts).
pub fn one_line(e: &TaintedEntry) -> String {
    let (lines, _) = describe(e);
    let kind = match &e.subject {
        Subject::File { .. } => "file",
        Subject::Process { .. } | Subject::UnverifiedProcess { .. } => "process",
        Subject::Unix { .. } | Subject::UnixPair { .. } => "socket",
        Subject::Flow(_) => "flow",
    };
    let mut s = format!("{kind} {}", lines.join(" "));
    if e.ended {
        s.push_str(" (ended)");
    }
    s.retain(|c| !c.is_control());
    s
}

/// A transport's name, as the wire writes it.
pub fn transport(t: Transport) -> &'static str {
    match t {
        Transport::Tcp => "tcp",
        Transport::Udp => "udp",
    }
}

/// The name of the event that carried taint.
pub fn carrier(c: Carrier) -> &'static str {
    match c {
        Carrier::Source => "source",
        Carrier::Open => "open",
        Carrier::Read => "read",
        Carrier::Write => "write",
        Carrier::Fork => "fork",
        Carrier::Send => "send",
        Carrier::Recv => "recv",
        Carrier::Identified => "identified",
    }
}

/// The graph of `nodes` in DOT; `names` maps VM UUIDs to names for the
/// cluster titles.
pub fn dot(nodes: &[VmEntry], names: &BTreeMap<String, String>) -> String {
    let mut by_vm: BTreeMap<&str, Vec<&TaintedEntry>> = BTreeMap::new();
    for n in nodes {
        by_vm.entry(&n.vm).or_default().push(&n.entry);
    }
    let mut out = String::from(
        "digraph taint {\n  rankdir=LR;\n  node [fontname=\"monospace\" fontsize=10];\n  \
         edge [fontname=\"monospace\" fontsize=9];\n",
    );
    for (i, (vm, entries)) in by_vm.iter().enumerate() {
        let title = match names.get(*vm) {
            Some(name) if name != vm => format!("{name} ({vm})"),
            _ => vm.to_string(),
        };
        out.push_str(&format!(
            "  subgraph cluster_{i} {{\n    label={};\n",
            quote(&title)
        ));
        for e in entries {
            let (mut lines, shape) = describe(e);
            if let Some(rule) = &e.rule {
                lines.push(format!("rule {rule}"));
            }
            let mut attrs = vec![format!("shape={shape}"), format!("label={}", label(&lines))];
            if e.origin.by == Carrier::Source {
                attrs.push("color=red penwidth=2".into());
            }
            if !e.verified {
                attrs.push("style=dashed".into());
            }
            if e.ended {
                attrs.push("fontcolor=gray40 color=gray60".into());
            }
            out.push_str(&format!(
                "    {} [{}];\n",
                node_id(vm, &e.subject),
                attrs.join(" ")
            ));
        }
        out.push_str("  }\n");
    }
    for n in nodes {
        let o = &n.entry.origin;
        let Some(from) = &o.from else { continue };
        let from_vm = o.from_vm.as_deref().unwrap_or(&n.vm);
        let when = rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_millis(o.at_ms));
        out.push_str(&format!(
            "  {} -> {} [label={}];\n",
            node_id(from_vm, from),
            node_id(&n.vm, &n.entry.subject),
            label(&[carrier(o.by).to_string(), when]),
        ));
    }
    out.push_str("}\n");
    out
}

/// Renders DOT to SVG with Graphviz's `dot` (Debian package `graphviz`).
pub fn svg(dot_text: &str) -> Result<Vec<u8>, TaintError> {
    let mut child = Command::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(TaintError::Graphviz)?;
    let mut stdin = child.stdin.take().expect("piped");
    let text = dot_text.to_owned();
    // Write from a thread: dot may fill its stdout before reading all input.
    let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
    let out = child.wait_with_output().map_err(TaintError::Graphviz)?;
    writer
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("writer panicked")))
        .map_err(TaintError::Graphviz)?;
    if !out.status.success() {
        return Err(TaintError::GraphvizFailed {
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use monitor_client::taint_report::Origin;

    fn entry(subject: Subject, name: &str, from: Option<Subject>, by: Carrier) -> TaintedEntry {
        TaintedEntry {
            subject,
            name: Some(name.into()),
            pid: Some(7),
            rule: Some("secret/**".into()),
            origin: Origin {
                from,
                from_vm: None,
                by,
                at_ms: 0,
                seq: 1,
            },
            verified: true,
            ended: false,
        }
    }

    fn hostile_graph() -> Vec<VmEntry> {
        let file = Subject::File { dev: 1, ino: 2 };
        let proc_ = Subject::Process {
            task: 0xffff_8880_0000_1000,
            start_time: 9,
        };
        vec![
            VmEntry {
                vm: "u1".into(),
                entry: entry(
                    file.clone(),
                    "secret/a \"b\" \\N\nc\u{0}",
                    None,
                    Carrier::Source,
                ),
            },
            VmEntry {
                vm: "u1".into(),
                entry: entry(proc_, "cat\"];evil", Some(file), Carrier::Read),
            },
        ]
    }

    #[test]
    fn names_from_the_guest_cannot_break_out_of_their_quotes() {
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(quote("x\ny\u{7f}"), "\"x<0a>y<7f>\"");
        let d = dot(&hostile_graph(), &BTreeMap::new());
        assert!(
            d.contains(r#"secret/a \"b\" \\N<0a>c<00>\ndev 1 ino 2"#),
            "{d}"
        );
        assert!(d.contains(r#"cat\"];evil pid 7"#), "{d}");
        assert!(d.contains("-> "), "{d}");
        // Every line outside quotes is DOT syntax of ours: no line starts
        // with text from a name.
        for line in d.lines() {
            let t = line.trim_start();
            assert!(
                t.starts_with('"')
                    || t.starts_with('}')
                    || t.starts_with("digraph")
                    || t.starts_with("rankdir")
                    || t.starts_with("node")
                    || t.starts_with("edge")
                    || t.starts_with("subgraph")
                    || t.starts_with("label"),
                "{line}"
            );
        }
    }

    #[test]
    fn graphviz_lays_it_out() {
        if Command::new("dot").arg("-V").output().is_err() {
            println!("SKIP: Graphviz dot is not installed (apt-get install graphviz)");
            return;
        }
        let d = dot(&hostile_graph(), &BTreeMap::new());
        let svg = String::from_utf8(svg(&d).unwrap()).unwrap();
        assert!(svg.contains("<svg"), "{svg}");
        assert!(svg.contains("cat&quot;];evil"), "{svg}");
        assert!(matches!(
            super::svg("digraph {"),
            Err(TaintError::GraphvizFailed { .. })
        ));
    }
}
