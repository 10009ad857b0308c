//! Query results as a plain text table for a terminal: every row up to a
//! stated limit, numbers right-aligned, floats to six significant digits.

use std::fmt::Write as _;

use polars::prelude::*;

/// Rows the text table prints; a longer result says how many it left out.
pub const TABLE_ROWS: usize = 1000;

fn cell(v: &AnyValue) -> String {
    match v {
        AnyValue::Null => "null".into(),
        AnyValue::Float64(f) => float(*f),
        AnyValue::Float32(f) => float(*f as f64),
        AnyValue::String(s) => s.to_string(),
        AnyValue::StringOwned(s) => s.to_string(),
        other => other.to_string(),
    }
}

/// Six significant digits, without trailing zeros; scientific where tiny or huge.
fn float(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let magnitude = v.abs().log10().floor() as i32;
    if !(-4..9).contains(&magnitude) {
        return format!("{v:.5e}");
    }
    let decimals = (5 - magnitude).max(0) as usize;
    let text = format!("{v:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// `df` as aligned text: a header, a rule, at most `max_rows` rows, and a
/// last line with the row count (and how many were left out).
pub fn text_table(df: &DataFrame, max_rows: usize) -> String {
    let shown = df.height().min(max_rows);
    let right: Vec<bool> = df
        .columns()
        .iter()
        .map(|c| c.dtype().is_primitive_numeric())
        .collect();
    let mut rows: Vec<Vec<String>> = vec![df
        .get_column_names()
        .iter()
        .map(|n| n.to_string())
        .collect()];
    for i in 0..shown {
        rows.push(
            df.columns()
                .iter()
                .map(|c| cell(&c.get(i).unwrap_or(AnyValue::Null)))
                .collect(),
        );
    }
    let widths: Vec<usize> = (0..df.width())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, text)| {
                if right[c] && i > 0 {
                    format!("{text:>w$}", w = widths[c])
                } else {
                    format!("{text:<w$}", w = widths[c])
                }
            })
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|&w| "-".repeat(w)).collect();
            let _ = writeln!(out, "{}", rule.join("  "));
        }
    }
    let n = df.height();
    let plural = if n == 1 { "" } else { "s" };
    if shown < n {
        let _ = writeln!(
            out,
            "{shown} of {n} rows shown (the first {max_rows}); add LIMIT/OFFSET, or --format csv for all"
        );
    } else {
        let _ = writeln!(out, "{n} row{plural}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_up_to_the_limit_aligned_and_counted() {
        let df = df!(
            "name" => ["a", "bb", "ccc"],
            "value" => [1.5f64, 0.000012345, 123456.789],
            "n" => [1u32, 20, 300],
        )
        .unwrap();
        let text = text_table(&df, 10);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "name  value       n");
        assert_eq!(lines[1], "----  ----------  ---");
        assert_eq!(lines[2], "a            1.5    1");
        assert_eq!(lines[3], "bb    1.23450e-5   20");
        assert_eq!(lines[4], "ccc       123457  300");
        assert_eq!(lines[5], "3 rows");
        let cut = text_table(&df, 2);
        assert!(cut.ends_with(
            "2 of 3 rows shown (the first 2); add LIMIT/OFFSET, or --format csv for all\n"
        ));
        assert_eq!(cut.lines().count(), 5);
    }
}
