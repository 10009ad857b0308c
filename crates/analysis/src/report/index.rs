//! `report.html`, the index: the verdict in one sentence, one table of every
//! SAE against the neurons, the interactive figures, the lines across
//! architectures, the sweep table and how to rebuild it all.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use polars::prelude::DataFrame;

use super::figures::{is_transcoder, Interactive, VENDOR_DIR};
use super::html::{escape, figure_html, html_table, link, page};
use super::sae_page::SAE_PAGE;
use super::verdict::{
    architecture, contests, family_verdict, feature_wins, live_fraction, run_verdict,
    sweep_verdict, FEW_LIVE,
};
use crate::digit_probe::DigitProbe;
use crate::probe::ProbeResult;
use crate::stats::MiSummary;
use crate::types::{AnalysisConfig, RunInfo, SaeSummary};

/// The neurons' layer for the table's last row: the first SAE's, or what the
/// first transcoder writes.
fn neuron_layer(summaries: &[SaeSummary]) -> String {
    summaries
        .iter()
        .find(|s| !is_transcoder(s))
        .map(|s| s.layer.clone())
        .or_else(|| {
            summaries
                .first()
                .and_then(|s| s.layer.split("->").nth(1).map(str::to_string))
        })
        .unwrap_or_default()
}

/// `features, 7 of 12`: the side that wins more of [`contests`], or why the SAE is left out.
fn who_wins(s: &SaeSummary) -> String {
    match feature_wins(s) {
        None => format!("left out: {:.0}% live", 100.0 * live_fraction(s)),
        Some((w, n)) if 2 * w > n => format!("features, {w} of {n}"),
        Some((w, n)) => format!("neurons, {} of {n}", n - w),
    }
}

fn f3(v: f64) -> String {
    format!("{v:.3}")
}

/// The label-information cells both kinds of row share: best and live-mean
/// binary and binned MI, the best detector and its AUROC, each probe's test
/// accuracy at `ks`, and (`digit`) the per-digit probe at k = 1. An SAE's
/// row (`sae`, its name) links its best detector to that feature's page.
fn label_cells(
    mi: &MiSummary,
    probes: &[ProbeResult],
    digit_probes: &[DigitProbe],
    ks: &[usize],
    digit: bool,
    sae: Option<&str>,
) -> String {
    let detector = mi.best_detector.as_ref();
    let class_f1 = |(u, d): &(usize, crate::labelinfo::Detector)| {
        let text = format!("{}, {:.3}", d.class, d.f1);
        match sae {
            Some(name) => format!(
                "<a href=\"{}/{}/{u}.html\" title=\"feature {u}\">{text}</a>",
                escape(name),
                super::FEATURE_DIR
            ),
            None => text,
        }
    };
    let mut cells: Vec<String> = vec![
        f3(mi.max_mi_bits),
        f3(mi.live_mean_mi_bits),
        f3(mi.max_mi_binned_bits),
        f3(mi.live_mean_mi_binned_bits),
        detector.map_or(String::new(), class_f1),
        detector.map_or(String::new(), |(_, d)| f3(d.auroc)),
    ];
    cells.extend(ks.iter().map(|k| {
        probes
            .iter()
            .find(|p| p.k == *k)
            .map_or(String::new(), |p| f3(p.test_accuracy))
    }));
    if digit {
        cells.push(f3(crate::digit_probe::mean_accuracy(digit_probes, 1)));
    }
    cells.iter().map(|c| format!("<td>{c}</td>")).collect()
}

/// One row per SAE and one for the neurons: every number with its split.
fn verdict_table(summaries: &[SaeSummary]) -> String {
    let Some(first) = summaries.first() else {
        return String::new();
    };
    let ks: Vec<usize> = first.feature_probes.iter().map(|p| p.k).collect();
    let digit = !first.feature_digit_probes.is_empty();
    let mut out = String::from(
        "<div class=\"scroll\"><table id=\"verdict-table\"><tr><th>SAE</th><th>who wins</th><th>architecture</th><th>d_sae</th>\
<th>live latents (train)</th><th>L0 (test)</th><th>EV (test)</th><th>CE recovered vs zero-ablation (test)</th>\
<th>ΔCE, nats (test)</th><th>Δaccuracy (test)</th><th>best binary MI (train)</th><th>live-mean binary MI (train)</th>\
<th>best binned MI (train)</th><th>live-mean binned MI (train)</th><th>best detector: class, F1 (train)</th><th>its AUROC (train)</th>",
    );
    for k in &ks {
        let _ = write!(out, "<th>probe k={k} (test)</th>");
    }
    if digit {
        out.push_str("<th>per-digit probe k=1 (test)</th>");
    }
    out.push_str("</tr>");
    for s in summaries {
        let live = s.features.units - s.features.dead;
        let few = live_fraction(s) < FEW_LIVE;
        let m = &s.metrics;
        let delta = |d: Option<f64>| d.map_or(String::new(), |d| format!("{d:+.4}"));
        let _ = write!(
            out,
            "<tr{}><td><a href=\"{}/{SAE_PAGE}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{live} ({:.0}%)</td><td>{:.1}</td><td>{:.4}{}</td>\
<td>{:.4}</td><td>{}</td><td>{}</td>{}</tr>",
            if few { " class=\"few\"" } else { "" },
            escape(&s.name),
            escape(&s.name),
            who_wins(s),
            escape(architecture(s)),
            s.d_sae,
            100.0 * live_fraction(s),
            m.l0,
            m.explained_variance,
            if is_transcoder(s) { "&dagger;" } else { "" },
            m.ce_recovered,
            delta(s.downstream.map(|d| d.spliced_loss - d.clean_loss)),
            delta(s.downstream.map(|d| m.spliced_accuracy - d.clean_accuracy)),
            label_cells(
                &s.features,
                &s.feature_probes,
                &s.feature_digit_probes,
                &ks,
                digit,
                Some(&s.name)
            ),
        );
    }
    let n = &first.neurons;
    let _ = write!(
        out,
        "<tr class=\"neurons\"><td>MLP {} neurons</td><td></td><td>neurons</td><td>{}</td><td>{} ({:.0}%)</td><td></td><td></td><td></td><td></td><td></td>{}</tr></table></div>",
        escape(&neuron_layer(summaries)),
        n.units,
        n.units - n.dead,
        100.0 * (n.units - n.dead) as f64 / n.units.max(1) as f64,
        label_cells(n, &first.neuron_probes, &first.neuron_digit_probes, &ks, digit, None),
    );
    let measures: Vec<String> = contests(first).into_iter().map(|c| c.measure).collect();
    let _ = write!(
        out,
        "<p>Who wins: on how many of these measures the SAE's features beat the neurons: {}. \
Greyed rows have under {:.0}% of their latents live and are left out of who wins and of the verdict. \
ΔCE and Δaccuracy: the MLP with the SAE's output spliced in, minus the clean MLP (test split). \
&dagger; A transcoder's EV is of the layer it predicts, not of the layer it reads. \
Means are over live units only; MI is in bits.</p>",
        escape(&measures.join(", ")),
        100.0 * FEW_LIVE
    );
    out
}

/// The interactive figures: a div per figure, its caption and its static
/// exports, then one script that embeds them all from the vendored builds.
fn figures_html(figures: &[Interactive], out_dir: &Path) -> (String, String) {
    if figures.is_empty() {
        return (String::new(), String::new());
    }
    let head = format!(
        "<script src=\"{VENDOR_DIR}/vega.min.js\"></script><script src=\"{VENDOR_DIR}/vega-lite.min.js\"></script>\
<script src=\"{VENDOR_DIR}/vega-embed.min.js\"></script>"
    );
    let mut body = String::from(
        "<p>Hover a point for its SAE and values; drag to pan, scroll to zoom, double-click to reset. \
Lines join each architecture's Pareto frontier (no other of its points has fewer active latents and a better value). \
Each figure's menu exports SVG or PNG; the static files below each figure are drawn from the same data.</p>",
    );
    body.push_str("<div class=\"figures\">");
    let mut specs = serde_json::Map::new();
    for f in figures {
        let exports: Vec<String> = f
            .pngs
            .iter()
            .filter(|p| p.is_file())
            .flat_map(|p| {
                let png = link(p, out_dir);
                let svg = link(&p.with_extension("svg"), out_dir);
                [
                    format!("<a href=\"{png}\">{png}</a>"),
                    format!("<a href=\"{svg}\">{svg}</a>"),
                ]
            })
            .collect();
        let _ = write!(
            body,
            "<figure class=\"interactive\" id=\"figure-{0}\"><div class=\"chart\" id=\"{0}\"></div><figcaption>{1}. Static: {2}</figcaption></figure>",
            f.id,
            escape(&f.caption),
            exports.join(" &middot; ")
        );
        specs.insert(f.id.clone(), f.spec.clone());
    }
    body.push_str("</div>");
    // `</` cannot end the script early: JSON escapes it.
    let json = serde_json::to_string(&specs)
        .expect("specs serialise")
        .replace("</", "<\\/");
    let _ = write!(
        body,
        "<script>const FIGURES = {json};\n\
for (const [id, spec] of Object.entries(FIGURES)) {{\n\
  vegaEmbed('#' + id, spec, {{mode: 'vega-lite', renderer: 'svg', actions: {{export: true, source: false, compiled: false, editor: false}}}})\n\
    .catch(e => console.error('figure ' + id + ': ' + e));\n\
}}</script>"
    );
    (head, body)
}

/// The index page's HTML.
pub fn render(
    summaries: &[SaeSummary],
    sweep: &DataFrame,
    static_figures: &[(String, PathBuf)],
    interactive: &[Interactive],
    run: &RunInfo,
    cfg: &AnalysisConfig,
    out_dir: &Path,
) -> String {
    let layer = neuron_layer(summaries);
    let mut body = format!(
        "<nav><a href=\"#answer\">The answer</a> &middot; <a href=\"#figures\">Figures</a> &middot; \
<a href=\"#across\">Across architectures</a> &middot; <a href=\"#sweep\">Sweep table</a> &middot; \
<a href=\"#definitions\">Definitions</a> &middot; <a href=\"#reproduce\">Reproduce</a></nav>\
<h1>saelab report: {}</h1><p>Do SAE features carry more information about the digit than the MLP's own neurons?</p>\
<h2 id=\"answer\">The answer</h2><p class=\"verdict\">{}</p>{}",
        escape(&layer),
        escape(&run_verdict(summaries)),
        verdict_table(summaries),
    );
    let mlp = run
        .mlp_test
        .map(|(loss, acc)| {
            format!(" The MLP: test accuracy {acc:.4}, cross-entropy {loss:.4} nats.")
        })
        .unwrap_or_default();
    let _ = write!(
        body,
        "<p><small>Built {} by saelab {}.{mlp} Rebuild: <code>{}</code> (<a href=\"#reproduce\">more</a>)</small></p>",
        escape(&run.built),
        escape(&run.version),
        escape(&run.reproduce)
    );
    if !run.circuits.is_empty() {
        body.push_str("<h2 id=\"circuits\">Circuits</h2><p>How does the MLP reach its answer, in features? Both sublayers replaced by transcoders, every test image's attribution graph against the MLP's own (neurons, gates frozen).</p>");
        for c in &run.circuits {
            let _ = write!(
                body,
                "<p>{} (<a href=\"{}{}\">on its own page</a>)</p>{}",
                escape(&c.summary.name),
                escape(&c.folder),
                super::CIRCUITS_PAGE,
                super::circuits_section(&c.summary, &c.folder)
            );
        }
    }
    let (head, figures) = figures_html(interactive, out_dir);
    let _ = write!(body, "<h2 id=\"figures\">Figures</h2>{figures}");
    body.push_str("<h2 id=\"across\">Across architectures</h2><ul>");
    let mut lines: Vec<String> = sweep_verdict(summaries).into_iter().collect();
    lines.extend(family_verdict(summaries));
    if lines.is_empty() {
        lines.push("One SAE: nothing to compare across.".into());
    }
    for line in lines {
        let _ = write!(body, "<li>{}</li>", escape(&line));
    }
    let _ = write!(
        body,
        "</ul><h2 id=\"sweep\">Sweep table</h2><p>Metrics first (the suffix says the split), then the sweep coordinates. \
<a href=\"sweep.parquet\">sweep.parquet</a>; query it with <code>cargo xtask query \"SELECT * FROM sweep\"</code>.</p>{}",
        html_table(sweep)
    );
    let _ = write!(
        body,
        "<h2 id=\"definitions\">Definitions</h2><p>Binary MI: I(A; Y) between a unit being active (value &gt; 0) and the label; it cannot exceed 1 bit and is small for rare units however pure. \
Binned MI: I(B; Y) with B = off or one of {} equal-count quantile bins of the unit's positive values. \
Detector: the class for which \"active\" has the best F1, and the AUROC of the value for it. \
Probes: multinomial logistic regression on the k units with the highest binary MI, test accuracy. \
Per-digit probe: SAEBench's k-sparse probing, one digit against the rest on balanced rows, mean test accuracy over digits. \
Purity and top label need {} active rows (analysis.min_support). \
Why latents die (each SAE's page): a latent's margin is its largest pre-activation over 2048 train rows minus its firing level (0, or JumpReLU's threshold); \
below 0 it fires on none of them.</p>",
        cfg.mi_bins, cfg.min_support
    );
    let _ = write!(
        body,
        "<h2 id=\"reproduce\">Reproduce</h2><p><code>{}</code></p><p>saelab {}, built {}.{mlp} The config and every SAE's params are in the sweep table and in each SAE's <code>saelab_config.json</code>.</p><div class=\"grid\">",
        escape(&run.reproduce),
        escape(&run.version),
        escape(&run.built),
    );
    for (caption, png) in static_figures
        .iter()
        .filter(|(_, p)| p.ends_with("mlp_loss.png"))
    {
        body.push_str(&figure_html(png, caption, out_dir));
    }
    body.push_str("</div>");
    page(&format!("saelab report: {layer}"), &head, &body)
}
