//! `features.html`: every live feature of one SAE in one page that needs no
//! server: a table sortable by any column (click its header) and filterable
//! (a text box; `col>x`, `col<x`, `col=x` or plain text), each row linking to
//! the feature's dashboard in `report.html` where one was rendered, or saying
//! the command that renders it (`cargo xtask dashboard --feature N`).

use std::path::{Path, PathBuf};

use crate::stats::UnitStats;
use crate::AnalysisError;

/// The file name of the browser page inside an SAE's folder.
pub const BROWSER_FILE: &str = "features.html";

const COLUMNS: [&str; 12] = [
    "feature",
    "freq_train",
    "mi_bits",
    "mi_binned_bits",
    "detector_class",
    "detector_f1",
    "detector_precision",
    "detector_recall",
    "detector_auroc",
    "purity",
    "top_label",
    "mean_act",
];

/// Writes `features.html` into `out_dir` for the SAE named `name`; features
/// in `dashboards` link to `report#<name>-feature-<id>` (relative to `out_dir`).
pub fn write_browser(
    name: &str,
    stats: &[UnitStats],
    dashboards: &[usize],
    report: &str,
    out_dir: &Path,
) -> Result<PathBuf, AnalysisError> {
    // One array per live feature: its COLUMNS (null where empty), then 1 if
    // the report has its dashboard.
    let rows: Vec<Vec<Option<f64>>> = stats
        .iter()
        .filter(|s| !s.dead)
        .map(|s| {
            let d = s.detector.as_ref();
            vec![
                Some(s.unit as f64),
                Some(s.freq_train),
                Some(s.mi_bits),
                Some(s.mi_binned_bits),
                d.map(|d| d.class as f64),
                d.map(|d| d.f1),
                d.map(|d| d.precision),
                d.map(|d| d.recall),
                d.map(|d| d.auroc),
                s.purity,
                s.top_label.map(f64::from),
                s.mean_act,
                Some(dashboards.contains(&s.unit) as u8 as f64),
            ]
        })
        .collect();
    // serde_json writes non-finite values as null.
    let rows = serde_json::to_string(&rows).expect("numbers always serialise");
    let header: String = COLUMNS
        .iter()
        .enumerate()
        .map(|(i, c)| format!("<th data-col=\"{i}\">{c}</th>"))
        .collect();
    let live = stats.iter().filter(|s| !s.dead).count();
    let html = format!(
        r#"<!DOCTYPE html><html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{name}: features</title><style>
*{{box-sizing:border-box}}body{{font-family:sans-serif;margin:1.5em auto;padding:0 1em;max-width:1400px}}
.scroll{{overflow-x:auto;max-width:100%}}table{{border-collapse:collapse}}
td,th{{border:1px solid #bbb;padding:3px 7px;text-align:right;white-space:nowrap}}
th{{background:#eee;cursor:pointer;position:sticky;top:0}}input{{width:min(40em,100%);padding:4px}}
</style></head><body>
<h1>{name}: {live} live features of {total}</h1>
<p><a href="{report}">back to this SAE's page</a>. Click a header to sort (again to reverse).
Filter: plain text matches any cell; <code>detector_class=7</code>, <code>freq_train&gt;0.01</code>,
<code>purity&lt;0.5</code> compare a column; several terms separated by spaces must all hold.
A feature without a dashboard here gets one with <code>cargo xtask dashboard --feature N</code>.</p>
<p><input id="filter" placeholder="e.g. detector_class=7 detector_f1>0.3"> <span id="count"></span></p>
<div class="scroll"><table><thead><tr>{header}<th>dashboard</th></tr></thead><tbody id="rows"></tbody></table></div>
<script>
const COLUMNS = {columns:?};
const ROWS = {rows};
const REPORT = {report:?};
const NAME = {name:?};
let order = {{col: 5, desc: true}};
function fmt(v, c) {{
  if (v === null) return '';
  if (COLUMNS[c] === 'feature' || COLUMNS[c].endsWith('class') || COLUMNS[c] === 'top_label') return String(v);
  return Math.abs(v) < 1e-3 && v !== 0 ? v.toExponential(2) : v.toFixed(4);
}}
function keep(row, terms) {{
  return terms.every(t => {{
    const m = t.match(/^([a-z_0-9]+)(<=|>=|=|<|>)(-?[0-9.e-]+)$/);
    if (m && COLUMNS.includes(m[1])) {{
      const v = row[COLUMNS.indexOf(m[1])], x = parseFloat(m[3]);
      if (v === null) return false;
      return {{'<': v < x, '>': v > x, '=': v === x, '<=': v <= x, '>=': v >= x}}[m[2]];
    }}
    return row.some((v, c) => c < COLUMNS.length && fmt(v, c).includes(t));
  }});
}}
function render() {{
  const terms = document.getElementById('filter').value.trim().split(/\s+/).filter(Boolean);
  const shown = ROWS.filter(r => keep(r, terms));
  shown.sort((a, b) => {{
    const x = a[order.col], y = b[order.col];
    if (x === y) return a[0] - b[0];
    if (x === null) return 1;
    if (y === null) return -1;
    return order.desc ? y - x : x - y;
  }});
  document.getElementById('rows').innerHTML = shown.map(r => '<tr>' +
    r.slice(0, COLUMNS.length).map((v, c) => '<td>' + fmt(v, c) + '</td>').join('') +
    '<td>' + (r[COLUMNS.length] ? '<a href="' + REPORT + '#' + NAME + '-feature-' + r[0] + '">open</a>'
      : '<code>cargo xtask dashboard --feature ' + r[0] + '</code>') + '</td></tr>').join('');
  document.getElementById('count').textContent = shown.length + ' of ' + ROWS.length + ' live features';
}}
document.querySelectorAll('th[data-col]').forEach(th => th.addEventListener('click', () => {{
  const col = +th.dataset.col;
  order = {{col, desc: order.col === col ? !order.desc : true}};
  render();
}}));
document.getElementById('filter').addEventListener('input', render);
render();
</script></body></html>
"#,
        name = name,
        live = live,
        total = stats.len(),
        report = report,
        header = header,
        columns = COLUMNS,
        rows = rows,
    );
    let path = out_dir.join(BROWSER_FILE);
    std::fs::write(&path, html).map_err(AnalysisError::io(&path))?;
    Ok(path)
}
