//! `features.html`: every live feature of one SAE in one page that needs no
//! server: a table sortable by any column (click its header) and filterable
//! (a text box; `col>x`, `col<x`, `col=x` or plain text), each row linking to
//! the feature's own page (`features/<id>.html`) and to its dashboard on the
//! SAE's page where one was rendered.

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
    dashboard_command: &str,
    out_dir: &Path,
) -> Result<PathBuf, AnalysisError> {
    let command = if dashboard_command.is_empty() {
        "cargo xtask dashboard"
    } else {
        dashboard_command
    };
    // One array per feature: its COLUMNS (null where empty), then 1 if the
    // SAE's page has its dashboard, then 1 if it is dead.
    let rows: Vec<Vec<Option<f64>>> = stats
        .iter()
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
                Some(s.dead as u8 as f64),
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
<p><a href="{report}">back to this SAE's page</a>. Click a header to sort (again to reverse); the arrow shows the order.
Filter: <code>detector_class=7</code>, <code>freq_train&gt;0.01</code>, <code>purity&lt;=0.5</code> compare a column
(<code>=</code>, <code>&lt;</code>, <code>&gt;</code>, <code>&lt;=</code>, <code>&gt;=</code>); <code>#454</code> or <code>454</code> is feature 454 exactly;
other text matches any cell; several terms separated by spaces must all hold.
Each live feature opens its own page; <code>{command_html} --feature N</code> renders a feature's dashboard as PNG and SVG figures.</p>
<p><input id="filter" placeholder="e.g. detector_class=7 detector_f1>0.3"> <label><input type="checkbox" id="dead"> show the {dead} dead features</label>
<span id="count"></span> <span id="error" style="color:#b00"></span></p>
<div class="scroll"><table><thead><tr>{header}<th>page</th></tr></thead><tbody id="rows"></tbody></table></div>
<script>
const COLUMNS = {columns:?};
const ROWS = {rows};
const REPORT = {report:?};
const NAME = {name:?};
const PAGES = {pages:?};
const DASHBOARD = COLUMNS.length, DEAD = COLUMNS.length + 1;
let order = {{col: 2, desc: true}};
function fmt(v, c) {{
  if (v === null) return '';
  if (COLUMNS[c] === 'feature' || COLUMNS[c].endsWith('class') || COLUMNS[c] === 'top_label') return String(v);
  return Math.abs(v) < 1e-3 && v !== 0 ? v.toExponential(2) : v.toFixed(4);
}}
// Each term becomes a test, or throws a sentence saying what is wrong with it.
function parse(term) {{
  const id = term.match(/^#?([0-9]+)$/);
  if (id) return row => row[0] === +id[1];
  const cmp = term.match(/^([^<>=]*)(<=|>=|=|<|>)(.*)$/);
  if (cmp) {{
    const [, name, op, text] = cmp;
    if (!COLUMNS.includes(name)) throw 'unknown column "' + name + '" in "' + term + '"; the columns are ' + COLUMNS.join(', ');
    const x = Number(text);
    if (text === '' || !isFinite(x)) throw '"' + text + '" in "' + term + '" is not a number';
    const c = COLUMNS.indexOf(name);
    return row => row[c] !== null && {{'<': row[c] < x, '>': row[c] > x, '=': row[c] === x, '<=': row[c] <= x, '>=': row[c] >= x}}[op];
  }}
  return row => row.slice(0, COLUMNS.length).some((v, c) => fmt(v, c).includes(term));
}}
function render() {{
  const terms = document.getElementById('filter').value.trim().split(/\s+/).filter(Boolean);
  let tests = [];
  try {{ tests = terms.map(parse); document.getElementById('error').textContent = ''; }}
  catch (e) {{ document.getElementById('error').textContent = e; }}
  const dead = document.getElementById('dead').checked;
  const shown = ROWS.filter(r => (dead || !r[DEAD]) && tests.every(t => t(r)));
  shown.sort((a, b) => {{
    const x = a[order.col], y = b[order.col];
    if (x === y) return a[0] - b[0];
    if (x === null) return 1;
    if (y === null) return -1;
    return order.desc ? y - x : x - y;
  }});
  document.querySelectorAll('th[data-col]').forEach(th => {{
    th.textContent = COLUMNS[+th.dataset.col] + (+th.dataset.col === order.col ? (order.desc ? ' \u25bc' : ' \u25b2') : '');
  }});
  document.getElementById('rows').innerHTML = shown.map(r => '<tr' + (r[DEAD] ? ' style="color:#999"' : '') + ' id="feature-' + r[0] + '">' +
    r.slice(0, COLUMNS.length).map((v, c) => '<td>' + fmt(v, c) + '</td>').join('') +
    '<td>' + (r[DEAD] ? 'never fires on train' : '<a href="' + PAGES + '/' + r[0] + '.html">open</a>' +
      (r[DASHBOARD] ? ' · <a href="' + REPORT + '#' + NAME + '-feature-' + r[0] + '">dashboard</a>' : '')) + '</td></tr>').join('');
  const total = dead ? ROWS.length : ROWS.filter(r => !r[DEAD]).length;
  document.getElementById('count').textContent = shown.length + ' of ' + total + (dead ? ' features' : ' live features');
}}
document.querySelectorAll('th[data-col]').forEach(th => th.addEventListener('click', () => {{
  const col = +th.dataset.col;
  order = {{col, desc: order.col === col ? !order.desc : true}};
  render();
}}));
document.getElementById('filter').addEventListener('input', render);
document.getElementById('dead').addEventListener('change', render);
if (location.hash.startsWith('#feature-')) document.getElementById('filter').value = '#' + location.hash.slice(9);
render();
</script></body></html>
"#,
        name = name,
        live = live,
        total = stats.len(),
        report = report,
        dead = stats.len() - live,
        command_html = command.replace('&', "&amp;").replace('<', "&lt;"),
        pages = crate::report::FEATURE_DIR,
        header = header,
        columns = COLUMNS,
        rows = rows,
    );
    let path = out_dir.join(BROWSER_FILE);
    std::fs::write(&path, html).map_err(AnalysisError::io(&path))?;
    Ok(path)
}
