//! HTML pieces every page of the report shares: escaping, links, figures as
//! lazily loaded files, tables and the page shell.

use std::fmt::Write as _;
use std::path::Path;

use polars::prelude::*;

// Nothing may be wider than the page: wide tables scroll inside their box,
// figures shrink to the column (two per row on a wide screen).
pub const STYLE: &str = "*{box-sizing:border-box}body{font-family:sans-serif;margin:1.5em auto;padding:0 1em;max-width:1400px}\
table{border-collapse:collapse;margin:0}td,th{border:1px solid #bbb;padding:3px 7px;text-align:right;white-space:nowrap}\
th{background:#eee;position:sticky;top:0}td:first-child,th:first-child{text-align:left}.scroll{overflow-x:auto;max-width:100%;margin:1em 0}\
img{max-width:100%;height:auto;border:1px solid #ddd;display:block}\
.grid{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}\
.grid figure{margin:0;flex:1 1 560px;max-width:680px;min-width:0}.grid img{width:100%}\
figcaption{font-size:small;color:#444}p,li{max-width:70em;line-height:1.4;overflow-wrap:anywhere}\
.verdict{font-size:1.15em;max-width:60em}tr.few td{color:#999}tr.neurons td{background:#f4f4f4;font-weight:bold}\
.chart{min-width:0;max-width:100%;overflow-x:auto}.figures{display:flex;flex-wrap:wrap;gap:12px}.figures figure{margin:0;max-width:100%}nav{font-size:small}code{overflow-wrap:anywhere}";

pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `path` relative to `base` when inside it, else as given.
pub fn link(path: &Path, base: &Path) -> String {
    path.strip_prefix(base)
        .unwrap_or(path)
        .to_string_lossy()
        .replace('\\', "/")
}

/// A figure: the PNG as a file beside the page, loaded when scrolled to,
/// linked to its full-size file (the SVG next to it where there is one), with
/// a caption. `page_dir` is the folder of the page that shows it.
pub fn figure_html(png: &Path, caption: &str, page_dir: &Path) -> String {
    let svg = png.with_extension("svg");
    let full = link(if svg.is_file() { &svg } else { png }, page_dir);
    format!(
        "<figure><a href=\"{full}\" title=\"open full size\"><img loading=\"lazy\" alt=\"{0}\" src=\"{1}\" width=\"1000\" height=\"620\"></a><figcaption>{0}</figcaption></figure>",
        escape(caption),
        link(png, page_dir),
    )
}

/// A whole page: the shared style, `head` extras (scripts) and the body.
pub fn page(title: &str, head: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
<title>{}</title><style>{STYLE}</style>{head}</head><body>{body}</body></html>\n",
        escape(title)
    )
}

fn cell(v: &AnyValue) -> String {
    match v {
        AnyValue::Null => String::new(),
        AnyValue::Float64(f) => number(*f),
        AnyValue::Float32(f) => number(*f as f64),
        AnyValue::String(s) => escape(s),
        AnyValue::StringOwned(s) => escape(s),
        other => escape(&other.to_string()),
    }
}

/// Integers without decimals, tiny values in scientific notation, else 4 decimals.
pub fn number(v: f64) -> String {
    if v.is_finite() && v == v.round() && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v != 0.0 && v.abs() < 1e-3 {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}

pub fn html_table(df: &DataFrame) -> String {
    let mut out = String::from("<div class=\"scroll\"><table><tr>");
    for name in df.get_column_names() {
        let _ = write!(out, "<th>{}</th>", escape(name));
    }
    out.push_str("</tr>");
    for i in 0..df.height() {
        out.push_str("<tr>");
        for column in df.columns() {
            let value = column.get(i).unwrap_or(AnyValue::Null);
            let _ = write!(out, "<td>{}</td>", cell(&value));
        }
        out.push_str("</tr>");
    }
    out.push_str("</table></div>");
    out
}
