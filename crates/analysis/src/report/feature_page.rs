//! One page per live feature, `<sae>/features/<id>.html`: everything sae_vis
//! and Neuronpedia show for a feature, for images. The pages need no script
//! and no other file (digits and the pixel view are PNGs inside the page,
//! charts are SVG with a tooltip per bar), so each weighs tens of kB and a
//! sweep of any size writes them in a fraction of a second.

use std::fmt::Write as _;
use std::path::PathBuf;

use base64::Engine as _;
use rayon::prelude::*;

use super::html::{escape, number, page};
use crate::atlas::{Atlas, FeatureCard, Match, Matcher};
use crate::stats::CLASSES;
use crate::AnalysisError;

/// The folder of an SAE's feature pages, inside its analysis folder.
pub const FEATURE_DIR: &str = "features";

const PAGE_STYLE: &str = ".tiles{display:flex;flex-wrap:wrap;gap:6px}.tiles figure{margin:0;text-align:center}\
.tiles img{width:84px;height:84px;image-rendering:pixelated;border:1px solid #ccc}.tiles figcaption{font-size:11px}\
.pixels{width:224px;height:224px;image-rendering:pixelated}.charts{display:flex;flex-wrap:wrap;gap:24px}\
svg text{font:11px sans-serif}";

/// Where a page's best matches go once every SAE of the run is analysed.
const MATCHES_MARKER: &str = "<!-- best matches -->";

/// Writes every card's page of `atlas`, leaving a place for the best matches
/// ([`fill_matches`]). Returns how many pages it wrote.
pub fn write_feature_pages(atlas: &Atlas) -> Result<usize, AnalysisError> {
    let dir = atlas.matcher.dir.join(FEATURE_DIR);
    std::fs::create_dir_all(&dir).map_err(AnalysisError::io(&dir))?;
    atlas
        .cards
        .par_iter()
        .enumerate()
        .try_for_each(|(i, card)| -> Result<(), AnalysisError> {
            let html = feature_html(atlas, i, card);
            let path: PathBuf = dir.join(format!("{}.html", card.feature));
            std::fs::write(&path, html).map_err(AnalysisError::io(&path))
        })?;
    Ok(atlas.cards.len())
}

/// Puts each page's best match in every other SAE of the run into the place
/// [`write_feature_pages`] left; `matches` is [`crate::atlas::best_matches`]'s.
pub fn fill_matches(
    matchers: &[Matcher],
    matches: &[Vec<Vec<Match>>],
) -> Result<(), AnalysisError> {
    for (mine, matches) in matchers.iter().zip(matches) {
        let dir = mine.dir.join(FEATURE_DIR);
        mine.live.par_iter().zip(matches).try_for_each(
            |(&feature, matches)| -> Result<(), AnalysisError> {
                let path = dir.join(format!("{feature}.html"));
                let page = std::fs::read_to_string(&path).map_err(AnalysisError::io(&path))?;
                let page = page.replacen(MATCHES_MARKER, &matches_html(matchers, mine, matches), 1);
                std::fs::write(&path, page).map_err(AnalysisError::io(&path))
            },
        )?;
    }
    Ok(())
}

/// The table of best matches (nothing when the run has one SAE).
fn matches_html(matchers: &[Matcher], mine: &Matcher, matches: &[Match]) -> String {
    if matches.is_empty() {
        return String::new();
    }
    let rows: String = matches
        .iter()
        .map(|m| {
            let other = &matchers[m.other];
            let cell = match m.best {
                Some((g, c)) => format!(
                    "<a href=\"../../{0}/{FEATURE_DIR}/{g}.html\">feature {g}</a></td><td>{1}",
                    escape(&other.name),
                    number(c)
                ),
                None if other.writes != mine.writes || other.d_out != mine.d_out => {
                    format!("writes {}, another space</td><td>", escape(&other.writes))
                }
                None => "no live feature</td><td>".to_string(),
            };
            format!("<tr><td>{}</td><td>{cell}</td></tr>", escape(&other.name))
        })
        .collect();
    format!(
        "<h2>Best match in each other SAE of the run</h2><p>The live feature whose decoder row is closest (cosine), where the SAE writes the same layer.</p>\
<div class=\"scroll\"><table><tr><th>SAE</th><th>feature</th><th>cosine</th></tr>{rows}</table></div>"
    )
}

fn feature_html(atlas: &Atlas, index: usize, card: &FeatureCard) -> String {
    let f = card.feature;
    let name = escape(&atlas.matcher.name);
    let mut body = String::new();
    let neighbour = |i: Option<usize>, text: &str| match i.and_then(|i| atlas.cards.get(i)) {
        Some(c) => format!(" · <a href=\"{0}.html\">{text} {0}</a>", c.feature),
        None => String::new(),
    };
    let _ = write!(
        body,
        "<nav><a href=\"../sae.html\">{name}</a> · <a href=\"../features.html\">all its features</a>{}{}</nav>\
<h1>Feature {f} of {name}</h1><p class=\"verdict\">{}</p>",
        neighbour(index.checked_sub(1), "previous live:"),
        neighbour(Some(index + 1), "next live:"),
        sentence(atlas, card),
    );
    let tile = |row: usize, caption: String| {
        format!(
            "<figure><img alt=\"train image {row}\" src=\"{}\"><figcaption>{caption}</figcaption></figure>",
            grey_png(&atlas.tiles[&row])
        )
    };
    let _ = write!(
        body,
        "<h2>Top activations (train)</h2><p>Its {} largest activations: dataset index, label, activation.</p><div class=\"tiles\">{}</div>",
        card.top.len(),
        card.top
            .iter()
            .map(|&(r, v, y)| tile(r, format!("#{r} · {y} · {}", number(v as f64))))
            .collect::<String>()
    );
    let _ = write!(
        body,
        "<div class=\"charts\"><div><h2>Activation where active</h2><p>Share of each split's rows per bin: train {} of {} rows, test {} of {}.</p>{}</div>\
<div><h2>Label when active</h2><p>P(label | active) on train (bars) against the base rate P(label) (black ticks).</p>{}</div></div>",
        card.active_train,
        atlas.train_rows,
        card.active_test,
        atlas.test_rows,
        histogram_svg(card),
        labels_svg(&card.label_share, &atlas.base_rate),
    );
    if let Some((rows, missed, of)) = &card.misses {
        let class = card.stats.detector.as_ref().map_or(0, |d| d.class);
        let _ = write!(
            body,
            "<h2>Its detector's false negatives</h2><p>It misses {missed} of the {of} train images of digit {class}{}.</p><div class=\"tiles\">{}</div>",
            if rows.is_empty() { "" } else { "; the first of them" },
            rows.iter()
                .map(|&r| tile(r, format!("#{r}")))
                .collect::<String>()
        );
    }
    let _ = write!(body, "<div class=\"charts\"><div><h2>In pixel space</h2>");
    match &card.pixel_view {
        Some(view) => {
            let scale = view.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let _ = write!(
                body,
                "<img class=\"pixels\" alt=\"pixel view of feature {f}\" src=\"{}\"><p style=\"max-width:30em\">Red pixels push it up, blue down (scale ±{}): {}.</p>",
                diverging_png(view),
                number(scale as f64),
                escape(&atlas.pixel_view_of)
            );
        }
        None => {
            let _ = write!(
                body,
                "<p>No pixel view: {}.</p>",
                escape(&atlas.pixel_view_of)
            );
        }
    }
    let _ = write!(
        body,
        "</div><div><h2>Effect on the logits</h2><p>Mean over {} active train rows of logit(with it) - logit(without it), sorted.</p>{}</div></div>",
        card.logit_rows,
        logits_svg(&card.logit_effect)
    );
    let _ = write!(
        body,
        "<h2>Nearest features in this SAE</h2><p>Live features with the most similar decoder rows (cosine).</p><ul>{}</ul>",
        card.nearest
            .iter()
            .map(|&(g, c)| format!("<li><a href=\"{g}.html\">feature {g}</a>: {}</li>", number(c)))
            .collect::<String>()
    );
    body.push_str(MATCHES_MARKER);
    page(
        &format!("{}: feature {f}", atlas.matcher.name),
        &format!("<style>{PAGE_STYLE}</style>"),
        &body,
    )
}

/// The feature in one sentence, from its numbers.
fn sentence(atlas: &Atlas, card: &FeatureCard) -> String {
    let s = &card.stats;
    let pct = |x: f64| format!("{:.1}%", 100.0 * x);
    let mut text = format!(
        "Fires on {} of train images ({} of test).",
        pct(s.freq_train),
        pct(s.freq_test)
    );
    if let (Some(y), Some(p)) = (s.top_label, s.purity) {
        let _ = write!(
            text,
            " When active it is digit {y} {} of the time (base rate {}).",
            pct(p),
            pct(atlas.base_rate[y as usize])
        );
    }
    if let Some(d) = &s.detector {
        let _ = write!(
            text,
            " As a detector of digit {}: F1 {}, AUROC {} (train).",
            d.class,
            number(d.f1),
            number(d.auroc)
        );
    }
    let _ = write!(
        text,
        " Label information {} bits ({} binned).",
        number(s.mi_bits),
        number(s.mi_binned_bits)
    );
    if let Some((c, e)) = card
        .logit_effect
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
    {
        let _ = write!(
            text,
            " Its largest effect is on the logit of {c} ({}).",
            number(*e)
        );
    }
    text
}

fn data_uri(png: Vec<u8>) -> String {
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    )
}

/// A 28x28 MNIST image, white on black as the dataset stores it.
fn grey_png(pixels: &[u8]) -> String {
    let rgb: Vec<u8> = pixels.iter().flat_map(|&p| [p, p, p]).collect();
    data_uri(crate::plots::encode_png(&rgb, (28, 28)))
}

/// 784 signed values: red positive, blue negative, white zero, on a scale
/// symmetric about zero.
fn diverging_png(values: &[f32]) -> String {
    let scale = values
        .iter()
        .fold(0.0f32, |m, v| m.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    let rgb: Vec<u8> = values
        .iter()
        .flat_map(|&v| {
            let t = (v / scale).clamp(-1.0, 1.0);
            let fade = (255.0 * (1.0 - t.abs())).round() as u8;
            if t >= 0.0 {
                [255, fade, fade]
            } else {
                [fade, fade, 255]
            }
        })
        .collect();
    data_uri(crate::plots::encode_png(&rgb, (28, 28)))
}

const W: f64 = 420.0;
const H: f64 = 200.0;
const LEFT: f64 = 44.0;
const BOTTOM: f64 = 24.0;

/// An SVG frame of `W` x `H` with a y axis from 0 to `y_max` labelled at its ends.
fn frame(y_max: f64, y_label: &str, inner: &str) -> String {
    format!(
        "<svg width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\"><line x1=\"{LEFT}\" y1=\"8\" x2=\"{LEFT}\" y2=\"{y0}\" stroke=\"#888\"/>\
<line x1=\"{LEFT}\" y1=\"{y0}\" x2=\"{W}\" y2=\"{y0}\" stroke=\"#888\"/><text x=\"{lx}\" y=\"14\" text-anchor=\"end\">{}</text><text x=\"{lx}\" y=\"{y0}\" text-anchor=\"end\">0</text>\
<text x=\"4\" y=\"{mid}\" transform=\"rotate(-90 10 {mid})\">{}</text>{inner}</svg>",
        number(y_max),
        escape(y_label),
        y0 = H - BOTTOM,
        lx = LEFT - 4.0,
        mid = H / 2.0,
    )
}

fn histogram_svg(card: &FeatureCard) -> String {
    let bins = card.hist_train.len().max(1);
    let top = card
        .hist_train
        .iter()
        .chain(&card.hist_test)
        .fold(0.0f64, |m, &v| m.max(v))
        .max(f64::MIN_POSITIVE);
    let (plot_w, plot_h) = (W - LEFT - 8.0, H - BOTTOM - 8.0);
    let bin_w = plot_w / bins as f64;
    let width = card.hist_max / bins as f64;
    let y = |v: f64| H - BOTTOM - v / top * plot_h;
    let mut inner = String::new();
    for (b, &v) in card.hist_train.iter().enumerate() {
        let _ = write!(
            inner,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#4c78a8\"><title>{}..{}: train {}</title></rect>",
            LEFT + b as f64 * bin_w + 1.0,
            y(v),
            (bin_w - 2.0).max(1.0),
            H - BOTTOM - y(v),
            number(b as f64 * width),
            number((b + 1) as f64 * width),
            number(v)
        );
    }
    let test: Vec<String> = card
        .hist_test
        .iter()
        .enumerate()
        .map(|(b, &v)| format!("{:.1},{:.1}", LEFT + (b as f64 + 0.5) * bin_w, y(v)))
        .collect();
    let _ = write!(
        inner,
        "<polyline points=\"{}\" fill=\"none\" stroke=\"#f58518\" stroke-width=\"2\"><title>test</title></polyline>\
<text x=\"{LEFT}\" y=\"{}\">0</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{} (largest train activation)</text>\
<text x=\"{}\" y=\"20\" fill=\"#4c78a8\">train</text><text x=\"{}\" y=\"34\" fill=\"#f58518\">test</text>",
        test.join(" "),
        H - 6.0,
        W - 8.0,
        H - 6.0,
        number(card.hist_max),
        W - 60.0,
        W - 60.0,
    );
    frame(top, "share of rows", &inner)
}

fn labels_svg(share: &[f64; CLASSES], base: &[f64; CLASSES]) -> String {
    let top = share
        .iter()
        .chain(base)
        .fold(0.0f64, |m, &v| m.max(v))
        .max(f64::MIN_POSITIVE);
    let (plot_w, plot_h) = (W - LEFT - 8.0, H - BOTTOM - 8.0);
    let slot = plot_w / CLASSES as f64;
    let y = |v: f64| H - BOTTOM - v / top * plot_h;
    let mut inner = String::new();
    for c in 0..CLASSES {
        let x = LEFT + c as f64 * slot;
        let _ = write!(
            inner,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#4c78a8\"><title>digit {c}: P(label | active) {}, base rate {}</title></rect>\
<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#000\" stroke-width=\"2\"/><text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{c}</text>",
            x + 4.0,
            y(share[c]),
            slot - 8.0,
            H - BOTTOM - y(share[c]),
            number(share[c]),
            number(base[c]),
            x + 2.0,
            x + slot - 2.0,
            y(base[c]),
            y(base[c]),
            x + slot / 2.0,
            H - 8.0
        );
    }
    frame(top, "probability", &inner)
}

/// Horizontal bars, one per class, largest effect first; positive to the right of zero.
fn logits_svg(effect: &[f64]) -> String {
    let mut order: Vec<usize> = (0..effect.len()).collect();
    order.sort_by(|&a, &b| effect[b].total_cmp(&effect[a]).then(a.cmp(&b)));
    let span = effect
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs()))
        .max(f64::MIN_POSITIVE);
    let row_h = (H - 16.0) / effect.len().max(1) as f64;
    let (zero, half) = (LEFT + (W - LEFT - 8.0) / 2.0, (W - LEFT - 8.0) / 2.0 - 40.0);
    let mut svg = format!(
        "<svg width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\"><line x1=\"{zero}\" x2=\"{zero}\" y1=\"4\" y2=\"{}\" stroke=\"#888\"/>",
        H - 8.0
    );
    for (i, &c) in order.iter().enumerate() {
        let (v, y) = (effect[c], 6.0 + i as f64 * row_h);
        let len = v.abs() / span * half;
        let (x, anchor, text_x) = if v >= 0.0 {
            (zero, "start", zero + len + 3.0)
        } else {
            (zero - len, "end", zero - len - 3.0)
        };
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">logit {c}</text><rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{len:.1}\" height=\"{:.1}\" fill=\"{}\"><title>logit {c}: {}</title></rect>\
<text x=\"{text_x:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\">{}</text>",
            LEFT - 4.0,
            y + row_h * 0.7,
            row_h - 3.0,
            if v >= 0.0 { "#4c78a8" } else { "#e45756" },
            number(v),
            y + row_h * 0.7,
            number(v)
        );
    }
    svg.push_str("</svg>");
    svg
}
