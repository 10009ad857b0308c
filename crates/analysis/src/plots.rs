//! Figures as data, drawn with plotters to PNG and SVG.
//!
//! Charts are described by [`Figure`] (line, point and bar layers on f64 axes) so
//! one drawing function serves both backends. Digit grids ([`DigitGrid`]) are
//! raster images and are written as PNG only. Text uses the vendored DejaVu Sans
//! (`assets/DejaVuSans.ttf`), so no system font is needed.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::AnalysisError;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
static REGISTER_FONT: Once = Once::new();

fn register_font() {
    REGISTER_FONT.call_once(|| {
        // The font is compiled in and known to parse; a failure would show as missing text.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// How a layer is drawn.
#[derive(Clone, Debug, PartialEq)]
pub enum Mark {
    Lines,
    /// Points, each with its text label when `labels` is non-empty.
    Points {
        labels: Vec<String>,
    },
    /// Bars of this width centred on each x, from 0 to y.
    Bars {
        width: f64,
    },
}

/// One named layer of a chart.
#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    pub name: String,
    pub mark: Mark,
    pub points: Vec<(f64, f64)>,
}

/// A chart on f64 axes; `log_x`/`log_y` draw that axis in decades (ticks
/// read as values; points <= 0 on a log axis are left out).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Figure {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub layers: Vec<Layer>,
    pub log_x: bool,
    pub log_y: bool,
}

impl Figure {
    /// The figure with log axes applied to its data (log10 of each coordinate).
    fn in_drawn_coordinates(&self) -> Figure {
        let axis = |log: bool, v: f64| {
            if log {
                (v > 0.0).then(|| v.log10())
            } else {
                Some(v)
            }
        };
        let mut drawn = self.clone();
        for layer in &mut drawn.layers {
            let keep: Vec<Option<(f64, f64)>> = layer
                .points
                .iter()
                .map(|&(x, y)| Some((axis(self.log_x, x)?, axis(self.log_y, y)?)))
                .collect();
            if let Mark::Points { labels } = &mut layer.mark {
                if !labels.is_empty() {
                    *labels = labels
                        .iter()
                        .zip(&keep)
                        .filter(|(_, k)| k.is_some())
                        .map(|(l, _)| l.clone())
                        .collect();
                }
            }
            layer.points = keep.into_iter().flatten().collect();
        }
        drawn
    }
}

const SIZE: (u32, u32) = (1000, 620);

/// Ten colours told apart easily, also by most colour-blind readers
/// (matplotlib's tab10), so per-digit layers do not collide.
const CATEGORICAL: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn plot_error(path: &Path) -> impl Fn(String) -> AnalysisError + '_ {
    move |message| AnalysisError::Plot {
        path: path.to_path_buf(),
        message,
    }
}

/// Draws `figure` to `<stem>.png` and `<stem>.svg`; returns both paths.
pub fn save_figure(figure: &Figure, stem: &Path) -> Result<[PathBuf; 2], AnalysisError> {
    register_font();
    let png = stem.with_extension("png");
    let svg = stem.with_extension("svg");
    let mut rgb = vec![0u8; (SIZE.0 * SIZE.1 * 3) as usize];
    let drawn = figure.in_drawn_coordinates();
    draw_figure(
        BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area(),
        &drawn,
    )
    .map_err(plot_error(&png))?;
    write_png(&rgb, SIZE, &png)?;
    draw_figure(SVGBackend::new(&svg, SIZE).into_drawing_area(), &drawn)
        .map_err(plot_error(&svg))?;
    Ok([png, svg])
}

/// A tick on a log axis, drawn at log10 of the value: the value itself where
/// it is 1, 2 or 5 times a power of ten, else no label (a grid line only), so
/// a log axis never reads 3162.28 or 25.12.
fn log_tick(v: f64) -> String {
    let value = 10f64.powf(v);
    let decade = 10f64.powf(v.floor());
    let nice = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * decade)
        .find(|n| (value / n - 1.0).abs() < 1e-6);
    match nice {
        None => String::new(),
        Some(n) if (1e-3..1e5).contains(&n) => tick(n),
        Some(n) => format!("{n:.0e}"),
    }
}

/// Axis tick text: integers without decimals, else at most 4 significant decimals.
fn tick(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 * v.abs().max(1.0) {
        // `+ 0.0` turns -0 into 0.
        format!("{:.0}", v.round() + 0.0)
    } else if v.abs() < 1e-3 {
        format!("{v:.1e}")
    } else {
        let text = format!("{v:.4}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn text<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// A range covering `values` with 5% padding (and a unit range when flat or empty).
fn padded_range(values: impl Iterator<Item = f64>, include_zero: bool) -> std::ops::Range<f64> {
    let (mut lo, mut hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if include_zero {
        lo = lo.min(0.0);
        hi = hi.max(0.0);
    }
    if !lo.is_finite() || !hi.is_finite() {
        return 0.0..1.0;
    }
    if hi - lo < 1e-12 {
        // A single value: a window around it that keeps its sign (0 to 1
        // for zero, so no tick reads -0 or -1.0e-9).
        if lo == 0.0 {
            return if include_zero { 0.0..1.0 } else { -0.5..0.5 };
        }
        let pad = lo.abs() * 0.2;
        return (lo - pad)..(hi + pad);
    }
    let pad = 0.05 * (hi - lo);
    (lo - pad)..(hi + pad)
}

fn draw_figure<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    figure: &Figure,
) -> Result<(), String> {
    root.fill(&WHITE).map_err(text)?;
    let has_bars = figure
        .layers
        .iter()
        .any(|l| matches!(l.mark, Mark::Bars { .. }));
    let x_range = padded_range(
        figure.layers.iter().flat_map(|l| {
            let half = if let Mark::Bars { width } = l.mark {
                width / 2.0
            } else {
                0.0
            };
            l.points.iter().flat_map(move |p| [p.0 - half, p.0 + half])
        }),
        false,
    );
    let y_range = padded_range(
        figure
            .layers
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.1)),
        has_bars && !figure.log_y,
    );
    // Bars rise from 0, or from the bottom of a log axis.
    let bar_base = if figure.log_y { y_range.start } else { 0.0 };
    let mut chart = ChartBuilder::on(&root)
        .caption(&figure.title, ("sans-serif", 24))
        .margin(14)
        .x_label_area_size(55)
        .y_label_area_size(85)
        .build_cartesian_2d(x_range, y_range)
        .map_err(text)?;
    let (x_tick, y_tick): (fn(f64) -> String, fn(f64) -> String) = (
        if figure.log_x { log_tick } else { tick },
        if figure.log_y { log_tick } else { tick },
    );
    let x_desc = if figure.log_x {
        format!("{} (log scale)", figure.x_label)
    } else {
        figure.x_label.clone()
    };
    let y_desc = if figure.log_y {
        format!("{} (log scale)", figure.y_label)
    } else {
        figure.y_label.clone()
    };
    chart
        .configure_mesh()
        .x_desc(x_desc.as_str())
        .y_desc(y_desc.as_str())
        .axis_desc_style(("sans-serif", 18))
        .label_style(("sans-serif", 17))
        .x_label_formatter(&|x| x_tick(*x))
        .y_label_formatter(&|y| y_tick(*y))
        .draw()
        .map_err(text)?;
    for (i, layer) in figure.layers.iter().enumerate() {
        let color = CATEGORICAL[i % CATEGORICAL.len()].to_rgba();
        let legend_color = color;
        let drawn = match &layer.mark {
            Mark::Lines => chart
                .draw_series(LineSeries::new(
                    layer.points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(text)?,
            Mark::Points { labels } => {
                if !labels.is_empty() {
                    chart
                        .draw_series(layer.points.iter().zip(labels).map(|(&p, label)| {
                            Text::new(label.clone(), p, ("sans-serif", 15).into_font())
                        }))
                        .map_err(text)?;
                }
                chart
                    .draw_series(
                        layer
                            .points
                            .iter()
                            .map(|&p| Circle::new(p, 4, color.filled())),
                    )
                    .map_err(text)?
            }
            Mark::Bars { width } => {
                let half = width / 2.0;
                let fill = color.mix(if figure.layers.len() > 1 { 0.5 } else { 0.9 });
                chart
                    .draw_series(layer.points.iter().map(|&(x, y)| {
                        Rectangle::new(
                            [(x - half * 0.9, bar_base), (x + half * 0.9, y)],
                            fill.filled(),
                        )
                    }))
                    .map_err(text)?
            }
        };
        if figure.layers.len() > 1 {
            drawn.label(layer.name.as_str()).legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 18, y + 5)], legend_color.filled())
            });
        }
    }
    if figure.layers.len() > 1 {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 16))
            .draw()
            .map_err(text)?;
    }
    root.present().map_err(text)?;
    Ok(())
}

/// `(bin centre, count)` of `values` over `bins` equal bins spanning their range.
pub fn histogram(values: &[f64], bins: usize) -> (Vec<(f64, f64)>, f64) {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if finite.is_empty() || bins == 0 {
        return (Vec::new(), 1.0);
    }
    let lo = finite.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let width = if hi > lo {
        (hi - lo) / bins as f64
    } else {
        1.0
    };
    let mut counts = vec![0.0; bins];
    for v in finite {
        let b = (((v - lo) / width) as usize).min(bins - 1);
        counts[b] += 1.0;
    }
    let centres = counts
        .into_iter()
        .enumerate()
        .map(|(b, c)| (lo + (b as f64 + 0.5) * width, c))
        .collect();
    (centres, width)
}

/// One 28x28 image with a caption; pixels are scaled so the tile's max is white.
#[derive(Clone, Debug, PartialEq)]
pub struct Tile {
    pub caption: String,
    pub pixels: Vec<f32>,
}

/// A grid of digit images (PNG only).
#[derive(Clone, Debug, PartialEq)]
pub struct DigitGrid {
    pub title: String,
    pub columns: usize,
    pub tiles: Vec<Tile>,
}

const TILE_SCALE: u32 = 3;
const TILE_PX: u32 = 28 * TILE_SCALE;
const CAPTION_PX: u32 = 18;

/// Draws `grid` to `<stem>.png`.
pub fn save_digit_grid(grid: &DigitGrid, stem: &Path) -> Result<PathBuf, AnalysisError> {
    register_font();
    let png = stem.with_extension("png");
    let columns = grid.columns.max(1);
    let rows = grid.tiles.len().div_ceil(columns).max(1) as u32;
    let cell = (TILE_PX + 8, TILE_PX + CAPTION_PX + 6);
    let size = ((columns as u32 * cell.0).max(240), rows * cell.1 + 30);
    let mut rgb = vec![0u8; (size.0 * size.1 * 3) as usize];
    let mut draw = || -> Result<(), String> {
        let root = BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area();
        root.fill(&WHITE).map_err(text)?;
        root.draw_text(
            &grid.title,
            &("sans-serif", 16).into_text_style(&root),
            (6, 6),
        )
        .map_err(text)?;
        for (i, tile) in grid.tiles.iter().enumerate() {
            let (gx, gy) = (
                (i % columns) as u32 * cell.0 + 4,
                (i / columns) as u32 * cell.1 + 30,
            );
            let max = tile.pixels.iter().copied().fold(0.0f32, f32::max).max(1e-6);
            for (p, &v) in tile.pixels.iter().enumerate().take(784) {
                let grey = ((v.max(0.0) / max) * 255.0).round() as u8;
                let (px, py) = (
                    (p % 28) as u32 * TILE_SCALE + gx,
                    (p / 28) as u32 * TILE_SCALE + gy,
                );
                root.draw(&Rectangle::new(
                    [
                        (px as i32, py as i32),
                        ((px + TILE_SCALE) as i32, (py + TILE_SCALE) as i32),
                    ],
                    RGBColor(grey, grey, grey).filled(),
                ))
                .map_err(text)?;
            }
            root.draw_text(
                &tile.caption,
                &("sans-serif", 12).into_text_style(&root),
                (gx as i32, (gy + TILE_PX + 2) as i32),
            )
            .map_err(text)?;
        }
        root.present().map_err(text)
    };
    draw().map_err(plot_error(&png))?;
    write_png(&rgb, size, &png)?;
    Ok(png)
}

/// Encodes an RGB8 buffer as PNG ("Up" filter, zlib): plots are mostly flat
/// colour, so this is several times smaller than plotters' own encoder output.
pub fn encode_png(rgb: &[u8], (width, height): (u32, u32)) -> Vec<u8> {
    use std::io::Write;
    let stride = width as usize * 3;
    let mut filtered = Vec::with_capacity((stride + 1) * height as usize);
    let mut previous: &[u8] = &[];
    for row in rgb.chunks_exact(stride).take(height as usize) {
        filtered.push(2);
        if previous.is_empty() {
            filtered.extend_from_slice(row);
        } else {
            filtered.extend(row.iter().zip(previous).map(|(a, b)| a.wrapping_sub(*b)));
        }
        previous = row;
    }
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(6));
    zlib.write_all(&filtered)
        .expect("writing to a Vec cannot fail");
    let idat = zlib.finish().expect("writing to a Vec cannot fail");
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut header = Vec::with_capacity(13);
    header.extend_from_slice(&width.to_be_bytes());
    header.extend_from_slice(&height.to_be_bytes());
    // 8-bit depth, colour type 2 (RGB), deflate, adaptive filtering, no interlace.
    header.extend_from_slice(&[8, 2, 0, 0, 0]);
    for (kind, data) in [
        (b"IHDR", header.as_slice()),
        (b"IDAT", idat.as_slice()),
        (b"IEND", &[]),
    ] {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(&crc.sum().to_be_bytes());
    }
    out
}

fn write_png(rgb: &[u8], size: (u32, u32), path: &Path) -> Result<(), AnalysisError> {
    std::fs::write(path, encode_png(rgb, size)).map_err(AnalysisError::io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_axes_label_only_one_two_five_and_no_tick_reads_minus_zero() {
        let at = |v: f64| log_tick(v.log10());
        assert_eq!(
            [
                at(1.0),
                at(2.0),
                at(5.0),
                at(20.0),
                at(0.5),
                at(1000.0),
                at(1e6)
            ],
            ["1", "2", "5", "20", "0.5", "1000", "1e6"].map(String::from)
        );
        for unlabelled in [3162.28, 25.12, 63.1, 2.51, 3.98, 15848.93] {
            assert_eq!(at(unlabelled), "", "{unlabelled}");
        }
        assert_eq!(tick(-0.0), "0");
        assert_eq!(tick(-1e-12), "0");
        // A flat series at zero gets a unit window, not one of width 2e-9.
        assert_eq!(padded_range([0.0, 0.0].into_iter(), true), 0.0..1.0);
    }
}
