//! `tchu map CATALOG...`: the fleet as one self-contained HTML page with an SVG (no script,
//! style or font from the network). Four columns: services that send, topics, subscription
//! patterns, services that receive; RPC requests go from caller to responder through their
//! topic (orange). Patterns that match nothing are red, topics nobody receives amber.
//!
//! A small inline script checks the drawing once the browser laid it out (every label inside
//! its box, no two boxes overlapping, everything inside the picture) and writes the result
//! in `<body data-check="...">`: CI renders the page in headless Chromium and reads it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use tchu::{CatalogFile, Pattern};

const ROW: f64 = 34.0;
const BOX_H: f64 = 24.0;
const TOP: f64 = 70.0;
const CHAR_W: f64 = 7.4;
const GAP: f64 = 90.0;

/// A box in a column.
struct Node {
    id: String,
    label: String,
    class: &'static str,
    title: String,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The page.
pub(crate) fn render(files: &[CatalogFile]) -> String {
    let mut senders: BTreeMap<String, Node> = BTreeMap::new();
    let mut topics: BTreeMap<String, Node> = BTreeMap::new();
    let mut patterns: BTreeMap<String, Node> = BTreeMap::new();
    let mut receivers: BTreeMap<String, Node> = BTreeMap::new();
    // (from, to, class, title)
    let mut edges: BTreeSet<(String, String, &'static str, String)> = BTreeSet::new();

    let service_node = |f: &CatalogFile, side: &str| Node {
        id: format!("{side}:{}", f.service),
        label: f.service.clone(),
        class: if f.language == "python" {
            "service python"
        } else {
            "service"
        },
        title: format!(
            "{} ({}{})",
            f.service,
            f.language,
            f.version
                .as_deref()
                .map(|v| format!(" {v}"))
                .unwrap_or_default()
        ),
    };
    for f in files {
        for p in &f.publishes {
            senders
                .entry(f.service.clone())
                .or_insert_with(|| service_node(f, "out"));
            topics.entry(p.topic.clone()).or_insert_with(|| Node {
                id: format!("topic:{}", p.topic),
                label: p.topic.clone(),
                class: "topic",
                title: p.type_name.clone().unwrap_or_else(|| p.topic.clone()),
            });
            edges.insert((
                format!("out:{}", f.service),
                format!("topic:{}", p.topic),
                "publishes",
                format!("{} publishes {}", f.service, p.topic),
            ));
        }
        for c in &f.calls {
            senders
                .entry(f.service.clone())
                .or_insert_with(|| service_node(f, "out"));
            topics.entry(c.topic.clone()).or_insert_with(|| Node {
                id: format!("topic:{}", c.topic),
                label: format!("{} (RPC)", c.topic),
                class: "topic rpc",
                title: format!("RPC request {}", c.request.as_deref().unwrap_or(&c.topic)),
            });
            edges.insert((
                format!("out:{}", f.service),
                format!("topic:{}", c.topic),
                "rpc",
                format!("{} calls {}", f.service, c.topic),
            ));
        }
    }
    for f in files {
        for s in &f.serves {
            receivers
                .entry(f.service.clone())
                .or_insert_with(|| service_node(f, "in"));
            topics.entry(s.topic.clone()).or_insert_with(|| Node {
                id: format!("topic:{}", s.topic),
                label: format!("{} (RPC)", s.topic),
                class: "topic rpc",
                title: format!("RPC request {}", s.request.as_deref().unwrap_or(&s.topic)),
            });
            edges.insert((
                format!("topic:{}", s.topic),
                format!("in:{}", f.service),
                "rpc",
                format!("{} answers {} (handler {})", f.service, s.topic, s.handler),
            ));
        }
        for s in &f.subscribes {
            receivers
                .entry(f.service.clone())
                .or_insert_with(|| service_node(f, "in"));
            let matched: Vec<String> = match Pattern::new(s.pattern.as_str()) {
                Ok(p) => topics.keys().filter(|t| p.matches(t)).cloned().collect(),
                Err(_) => Vec::new(),
            };
            let node = patterns.entry(s.pattern.clone()).or_insert_with(|| Node {
                id: format!("pattern:{}", s.pattern),
                label: s.pattern.clone(),
                class: "pattern",
                title: String::new(),
            });
            if matched.is_empty() {
                node.class = "pattern unmatched";
            }
            let _ = write!(node.title, "{} handler {}; ", f.service, s.id);
            for t in matched {
                edges.insert((
                    format!("topic:{t}"),
                    format!("pattern:{}", s.pattern),
                    "matches",
                    format!("{t} matches {}", s.pattern),
                ));
            }
            edges.insert((
                format!("pattern:{}", s.pattern),
                format!("in:{}", f.service),
                "subscribes",
                format!(
                    "{} subscribes to {} (handler {})",
                    f.service, s.pattern, s.id
                ),
            ));
        }
    }
    for (t, n) in topics.iter_mut() {
        let received = edges
            .iter()
            .any(|(from, _, _, _)| from == &format!("topic:{t}"));
        if !received {
            n.class = if n.class.contains("rpc") {
                "topic rpc unconsumed"
            } else {
                "topic unconsumed"
            };
        }
    }

    let columns: [(&str, Vec<&Node>); 4] = [
        ("sends", senders.values().collect()),
        ("topics", topics.values().collect()),
        ("subscribed patterns", patterns.values().collect()),
        ("receives", receivers.values().collect()),
    ];
    let widths: Vec<f64> = columns
        .iter()
        .map(|(h, nodes)| {
            nodes
                .iter()
                .map(|n| n.label.chars().count())
                .chain([h.chars().count()])
                .max()
                .unwrap_or(8) as f64
                * CHAR_W
                + 24.0
        })
        .collect();
    let mut xs = Vec::new();
    let mut x = 20.0;
    for w in &widths {
        xs.push(x);
        x += w + GAP;
    }
    let width = x - GAP + 20.0;
    let rows = columns
        .iter()
        .map(|(_, n)| n.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let height = TOP + rows as f64 * ROW + 60.0;

    let mut pos: BTreeMap<&str, (f64, f64, f64)> = BTreeMap::new(); // id -> (x, y, w)
    for (c, (_, nodes)) in columns.iter().enumerate() {
        let offset = (rows - nodes.len()) as f64 * ROW / 2.0;
        for (i, n) in nodes.iter().enumerate() {
            pos.insert(
                n.id.as_str(),
                (xs[c], TOP + offset + i as f64 * ROW, widths[c]),
            );
        }
    }

    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" id="fleet" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" role="img" aria-label="tchu fleet map">"#
    );
    svg.push_str(r##"<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>"##);
    for (c, (h, _)) in columns.iter().enumerate() {
        let _ = write!(
            svg,
            r#"<text class="heading" x="{:.1}" y="40">{}</text>"#,
            xs[c],
            esc(h)
        );
    }
    for (from, to, class, title) in &edges {
        let (Some(a), Some(b)) = (pos.get(from.as_str()), pos.get(to.as_str())) else {
            continue;
        };
        let (x1, y1) = (a.0 + a.2, a.1 + BOX_H / 2.0);
        let (x2, y2) = (b.0, b.1 + BOX_H / 2.0);
        let mx = (x1 + x2) / 2.0;
        let _ = write!(
            svg,
            r#"<path class="edge {class}" data-from="{}" data-to="{}" d="M{x1:.1},{y1:.1} C{mx:.1},{y1:.1} {mx:.1},{y2:.1} {x2:.1},{y2:.1}" marker-end="url(#arrow)"><title>{}</title></path>"#,
            esc(from),
            esc(to),
            esc(title)
        );
    }
    for (_, nodes) in &columns {
        for n in nodes {
            let Some((x, y, w)) = pos.get(n.id.as_str()) else {
                continue;
            };
            let _ = write!(
                svg,
                r#"<g class="node {}" data-id="{}"><title>{}</title><rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{BOX_H}" rx="5"/><text x="{:.1}" y="{:.1}">{}</text></g>"#,
                n.class,
                esc(&n.id),
                esc(&n.title),
                x + 10.0,
                y + 16.5,
                esc(&n.label)
            );
        }
    }
    svg.push_str("</svg>");

    let services: BTreeSet<&str> = files.iter().map(|f| f.service.as_str()).collect();
    let summary = format!(
        "{} services, {} topics, {} patterns",
        services.len(),
        topics.len(),
        patterns.len()
    );
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>tchu fleet map</title>
<style>
body {{ font: 13px/1.4 system-ui, sans-serif; margin: 16px; color: #222; background: #fff; }}
h1 {{ font-size: 18px; margin: 0 0 4px; }}
p.legend span {{ display: inline-block; padding: 1px 8px; margin-right: 6px; border-radius: 4px; border: 1px solid #999; }}
svg text {{ font: 12px monospace; fill: #111; }}
svg text.heading {{ font: bold 13px system-ui, sans-serif; fill: #444; }}
.node rect {{ stroke: #555; stroke-width: 1; }}
.service rect {{ fill: #dbeafe; }}
.python rect {{ fill: #fef9c3; }}
.topic rect {{ fill: #dcfce7; }}
.rpc rect {{ fill: #ffedd5; }}
.pattern rect {{ fill: #f3e8ff; }}
.unmatched rect {{ fill: #fecaca; stroke: #b91c1c; stroke-width: 2; }}
.unconsumed rect {{ fill: #fde68a; stroke: #b45309; stroke-width: 2; }}
.edge {{ fill: none; stroke: #777; stroke-width: 1.3; }}
.edge.publishes {{ stroke: #2563eb; }}
.edge.rpc {{ stroke: #ea580c; stroke-width: 2; }}
.edge.matches {{ stroke: #9ca3af; stroke-dasharray: 4 3; }}
.edge.subscribes {{ stroke: #7c3aed; }}
</style></head>
<body data-check="pending">
<h1>tchu fleet map</h1>
<p id="summary">{summary}: {}</p>
<p class="legend"><span style="background:#dbeafe">Rust service</span><span style="background:#fef9c3">Python service</span><span style="background:#dcfce7">topic</span><span style="background:#ffedd5">RPC request</span><span style="background:#f3e8ff">pattern</span><span style="background:#fecaca;border-color:#b91c1c">pattern matching nothing</span><span style="background:#fde68a;border-color:#b45309">topic nobody receives</span><span style="border:0">arrows: <b style="color:#2563eb">publishes</b>, <b style="color:#9ca3af">matches</b>, <b style="color:#7c3aed">subscribes</b>, <b style="color:#ea580c">RPC</b></span></p>
{svg}
<script>
// Checks the layout the browser made; CI reads the verdict from <body data-check>.
(function () {{
  var svg = document.getElementById('fleet');
  var vb = svg.viewBox.baseVal, problems = [];
  var boxes = Array.prototype.map.call(document.querySelectorAll('g.node'), function (g) {{
    var r = g.querySelector('rect').getBBox(), t = g.querySelector('text').getBBox();
    var id = g.getAttribute('data-id');
    if (t.width <= 0) problems.push('empty label ' + id);
    if (t.x < r.x || t.x + t.width > r.x + r.width) problems.push('label outside its box: ' + id);
    if (r.x < vb.x || r.y < vb.y || r.x + r.width > vb.x + vb.width || r.y + r.height > vb.y + vb.height) problems.push('outside the picture: ' + id);
    return {{ id: id, r: r }};
  }});
  for (var i = 0; i < boxes.length; i++) for (var j = i + 1; j < boxes.length; j++) {{
    var a = boxes[i].r, b = boxes[j].r;
    if (a.x < b.x + b.width && b.x < a.x + a.width && a.y < b.y + b.height && b.y < a.y + a.height) problems.push('overlap: ' + boxes[i].id + ' / ' + boxes[j].id);
  }}
  var edges = document.querySelectorAll('path.edge').length;
  // What is drawn red (a pattern matching nothing) and amber (a topic nobody receives).
  var red = 0, amber = 0;
  document.querySelectorAll('g.node rect').forEach(function (r) {{
    var fill = getComputedStyle(r).fill;
    if (fill === 'rgb(254, 202, 202)') red++;
    if (fill === 'rgb(253, 230, 138)') amber++;
  }});
  document.body.setAttribute('data-check', problems.length ? 'failed: ' + problems.join('; ') : 'ok ' + boxes.length + ' nodes ' + edges + ' edges ' + red + ' red ' + amber + ' amber');
}})();
</script>
</body></html>
"#,
        esc(&services.iter().copied().collect::<Vec<_>>().join(", "))
    )
}
