//! Lays a [`Report`] out on disk: `index.html` (self-contained: figures inline as `<svg>`),
//! `report.md` (figures as files under `figures/`), each written atomically.

use std::fmt::Write as _;
use std::path::Path;

use concord_core::fsutil;

use crate::{Report, Result, Table};

/// Writes `dir/index.html`, `dir/report.md` and `dir/figures/<id>.svg`.
pub fn write(dir: &Path, report: &Report) -> Result<()> {
    for fig in report.figures() {
        fsutil::write_bytes_atomic(
            &dir.join("figures").join(format!("{}.svg", fig.id)),
            fig.svg.as_bytes(),
        )?;
    }
    fsutil::write_bytes_atomic(&dir.join("report.md"), markdown(report).as_bytes())?;
    fsutil::write_bytes_atomic(&dir.join("index.html"), html(report).as_bytes())?;
    Ok(())
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}

/// The markdown twin of the report.
pub fn markdown(r: &Report) -> String {
    let mut md = format!("# {}\n\n", r.title);
    for p in &r.intro {
        let _ = write!(md, "{p}\n\n");
    }
    if !r.findings.is_empty() {
        md.push_str(
            "## Findings\n\n| question | ours | published anchors | verdict |\n|---|---|---|---|\n",
        );
        for f in &r.findings {
            let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                cell(&f.question),
                cell(&f.ours),
                cell(&f.anchor),
                cell(&f.verdict)
            );
        }
        md.push('\n');
    }
    for s in &r.sections {
        let _ = write!(md, "## {}\n\n", s.heading);
        for p in &s.paragraphs {
            let _ = write!(md, "{p}\n\n");
        }
        for f in &s.figures {
            let _ = write!(
                md,
                "![{}](figures/{}.svg)\n\n*{}*\n\n",
                f.title, f.id, f.caption
            );
        }
        for t in &s.tables {
            md.push_str(&markdown_table(t));
        }
    }
    if !r.caveats.is_empty() {
        md.push_str("## Caveats\n\n");
        for c in &r.caveats {
            let _ = writeln!(md, "- {c}");
        }
        md.push('\n');
    }
    md
}

fn markdown_table(t: &Table) -> String {
    let mut md = String::new();
    if !t.caption.is_empty() {
        let _ = write!(md, "*{}*\n\n", t.caption);
    }
    let _ = writeln!(md, "| {} |", t.header.join(" | "));
    let _ = writeln!(md, "|{}", "---|".repeat(t.header.len()));
    for row in &t.rows {
        let _ = writeln!(md, "| {} |", row.join(" | "));
    }
    md.push('\n');
    md
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;\
color:#222;line-height:1.5}figure{margin:1.5em 0;border:1px solid #ddd;padding:.6em}figcaption{font-size:.9em;\
color:#444}table{border-collapse:collapse;margin:1em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .5em;\
text-align:left}th{background:#f3f3f3}svg{max-width:100%;height:auto}";

/// The self-contained HTML page.
pub fn html(r: &Report) -> String {
    let mut h = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>\n<h1>{}</h1>\n",
        esc(&r.title),
        esc(&r.title)
    );
    for p in &r.intro {
        let _ = writeln!(h, "<p>{}</p>", esc(p));
    }
    if !r.findings.is_empty() {
        h.push_str("<h2 id=\"findings\">Findings</h2>\n<table class=\"findings\"><tr><th>question</th><th>ours</th><th>published anchors</th><th>verdict</th></tr>\n");
        for f in &r.findings {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td class=\"number\">{}</td><td>{}</td><td>{}</td></tr>",
                esc(&f.question),
                esc(&f.ours),
                esc(&f.anchor),
                esc(&f.verdict)
            );
        }
        h.push_str("</table>\n");
    }
    for s in &r.sections {
        let _ = writeln!(h, "<h2>{}</h2>", esc(&s.heading));
        for p in &s.paragraphs {
            let _ = writeln!(h, "<p>{}</p>", esc(p));
        }
        for f in &s.figures {
            // The SVG documents come from plotters; drop their XML prolog if any.
            let svg = f.svg.trim_start_matches(|c| c != '<');
            let svg = if svg.starts_with("<?xml") {
                svg.split_once("?>").map_or(svg, |x| x.1)
            } else {
                svg
            };
            let _ = writeln!(
                h,
                "<figure id=\"{}\">{}<figcaption><b>{}.</b> {}</figcaption></figure>",
                esc(&f.id),
                svg,
                esc(&f.title),
                esc(&f.caption)
            );
        }
        for t in &s.tables {
            if !t.caption.is_empty() {
                let _ = writeln!(h, "<p><i>{}</i></p>", esc(&t.caption));
            }
            h.push_str("<table><tr>");
            for c in &t.header {
                let _ = write!(h, "<th>{}</th>", esc(c));
            }
            h.push_str("</tr>\n");
            for row in &t.rows {
                h.push_str("<tr>");
                for c in row {
                    let _ = write!(h, "<td>{}</td>", esc(c));
                }
                h.push_str("</tr>\n");
            }
            h.push_str("</table>\n");
        }
    }
    if !r.caveats.is_empty() {
        h.push_str("<h2 id=\"caveats\">Caveats</h2>\n<ul>\n");
        for c in &r.caveats {
            let _ = writeln!(h, "<li>{}</li>", esc(c));
        }
        h.push_str("</ul>\n");
    }
    h.push_str("</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Figure, Finding, Section};

    #[test]
    fn html_is_self_contained_and_escaped() {
        let r = Report {
            title: "A <study>".into(),
            intro: vec!["x & y".into()],
            findings: vec![Finding {
                question: "Size?".into(),
                ours: "0.61 [0.58, 0.64]".into(),
                anchor: "a".into(),
                verdict: "agrees".into(),
            }],
            sections: vec![Section {
                heading: "Size".into(),
                figures: vec![Figure {
                    id: "f1".into(),
                    title: "T".into(),
                    caption: "C".into(),
                    svg: "<svg><rect/></svg>".into(),
                }],
                tables: vec![Table {
                    caption: String::new(),
                    header: vec!["a".into()],
                    rows: vec![vec!["1".into()]],
                }],
                ..Section::default()
            }],
            caveats: vec!["short <training>".into()],
        };
        let page = html(&r);
        assert!(page.contains("A &lt;study&gt;") && page.contains("x &amp; y"));
        assert!(page.contains("<figure id=\"f1\"><svg><rect/></svg>"));
        assert!(page.contains("0.61 [0.58, 0.64]"));
        assert!(!page.contains("src=\"http"), "no external resources");
        let md = markdown(&r);
        assert!(
            md.contains("![T](figures/f1.svg)") && md.contains("| Size? | 0.61 [0.58, 0.64] |")
        );
        assert!(
            page.contains("<h2 id=\"caveats\">Caveats</h2>\n<ul>\n<li>short &lt;training&gt;</li>")
        );
        assert!(md.ends_with("## Caveats\n\n- short <training>\n\n"), "{md}");
    }
}
