//! The circuits stage end to end on the real MNIST files: a T1 and a T2
//! trained briefly, every test image's graphs, the tables, one graph drawn
//! on demand, and the refusals.

mod support;

use support::{verdict, xtask, Run};

const CIRCUIT: &str = "circuits/transcoder-topk-k32/d256/s0";

/// `args` with the circuits preset, quick, given before the
/// subcommand as a user types them; the support module adds its quick
/// settings after it, and every `--set` counts.
fn circuits(store: &std::path::Path, args: &[&str]) -> Run {
    let mut all = vec![
        "--preset",
        "circuits",
        "--set",
        "sae.lr_warmup_steps=10",
        "--set",
        "sae.lr_decay_steps=20",
        "--set",
        "sae.sparsity_warmup_steps=10",
    ];
    all.extend_from_slice(args);
    xtask(store, &all)
}

fn csv_rows(run: &Run) -> Vec<Vec<String>> {
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    run.stdout
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(String::from).collect())
        .collect()
}

#[test]
fn every_test_image_gets_its_graphs_and_one_is_drawn_on_demand() {
    let store = tempfile::tempdir().unwrap();
    let run = circuits(store.path(), &["all"]);
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(verdict(&run, CIRCUIT), "ran");

    let query = |sql: &str| csv_rows(&circuits(store.path(), &["query", sql, "--format", "csv"]));
    let counts = query("SELECT graph, count(*) AS n, min(replacement_score) AS r0, max(replacement_score) AS r1, min(completeness_score) AS c0, avg(features_by_influence) AS f, avg(active) AS a FROM circuit_images GROUP BY graph ORDER BY graph");
    assert_eq!(counts.len(), 2, "{counts:?}");
    for row in &counts {
        let v: Vec<f64> = row[1..].iter().map(|x| x.parse().unwrap()).collect();
        assert_eq!(v[0], 10000.0, "{row:?}");
        assert!(v[1] > 0.0 && v[2] <= 1.0 + 1e-12 && v[3] > 0.0, "{row:?}");
        // Fewer nodes carry 80% of the influence than are active.
        assert!(v[4] > 0.0 && v[4] < v[5], "{row:?}");
        if row[0] == "neurons" {
            assert!(
                (v[1] - 1.0).abs() < 1e-12,
                "no error node: a replacement score of 1"
            );
        }
    }
    // With its errors, the replacement is the MLP.
    let splice = query("SELECT replaced, kl, top1_agreement FROM circuit_splice WHERE with_errors");
    assert_eq!(splice.len(), 3);
    for row in splice {
        assert!(
            row[1].parse::<f64>().unwrap().abs() < 1e-9 && row[2] == "1.0",
            "{row:?}"
        );
    }
    let digits = query("SELECT DISTINCT digit FROM circuit_edges WHERE graph = 'transcoders'");
    assert_eq!(digits.len(), 10);
    // Ablations of the first 1000 images; T2's and fc2's are exact.
    let ablations = query("SELECT graph, layer, count(*) AS n, max(abs(predicted - actual)) AS worst, count(DISTINCT image) AS images FROM circuit_ablations GROUP BY graph, layer ORDER BY graph, layer");
    assert_eq!(ablations.len(), 4, "{ablations:?}");
    for row in &ablations {
        assert_eq!(row[4], "1000", "{row:?}");
        if row[1] == "1" {
            assert!(row[3].parse::<f64>().unwrap() < 1e-9, "{row:?}");
        }
    }
    let faithful = query("SELECT count(faithfulness_circuit) AS n, median(faithfulness_circuit) AS c FROM circuit_images WHERE graph = 'transcoders'");
    assert_eq!(faithful[0][0], "10000");
    // The report has a Circuits section whose link reaches the circuits page.
    let report = circuits(store.path(), &["report"]);
    let report = std::path::PathBuf::from(report.stdout.lines().last().unwrap());
    let index = std::fs::read_to_string(&report).unwrap();
    let link = index
        .split("id=\"circuits\"")
        .nth(1)
        .and_then(|rest| rest.split("href=\"").nth(1))
        .and_then(|rest| rest.split('"').next())
        .expect("a Circuits section with a link");
    let page = std::fs::read_to_string(report.parent().unwrap().join(link)).unwrap();
    assert!(
        page.contains("Nodes for 80%") && page.contains("digit-3.html"),
        "{link}"
    );
    // The section itself holds the per-digit table and the checks, its links reaching the digit pages.
    let section = index
        .split("id=\"circuits\"")
        .nth(1)
        .unwrap()
        .split("id=\"figures\"")
        .next()
        .unwrap();
    assert!(section.contains("faithfulness: circuit") && section.contains("sign agreement"));
    for href in section
        .split("href=\"")
        .skip(1)
        .filter_map(|r| r.split('"').next())
    {
        assert!(report.parent().unwrap().join(href).is_file(), "{href}");
    }

    let drawn = circuits(store.path(), &["circuit", "--image", "7"]);
    assert!(drawn.ok, "{}", drawn.stderr);
    let paths: Vec<&str> = drawn.stdout.lines().collect();
    let html = std::fs::read_to_string(paths[0]).unwrap();
    assert!(html.contains("<svg") && !html.contains("<script") && !html.contains("https://"));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(paths[1]).unwrap()).unwrap();
    let ids: Vec<&str> = json["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node_id"].as_str().unwrap())
        .collect();
    let links = json["links"].as_array().unwrap();
    assert!(!links.is_empty());
    for link in links {
        for end in ["source", "target"] {
            assert!(ids.contains(&link[end].as_str().unwrap()), "{link}");
        }
    }
    let targets = json["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["is_target_logit"] == true)
        .count();
    assert_eq!(targets, 1);
    assert_eq!(json["metadata"]["prompt"], "MNIST test image 7 (label 9)");
    let neurons = circuits(store.path(), &["circuit", "--digit", "4", "--neurons"]);
    assert!(neurons.ok, "{}", neurons.stderr);
    assert!(neurons.stdout.contains("digit-4-neurons.html"));

    for (args, says) in [
        (&["circuit", "--image", "10000"][..], "--image 10000: the test set has 10000 images, 0 to 9999"),
        (&["circuit", "--digit", "12"][..], "--digit 12: a digit is 0 to 9"),
        (&["circuit", "--image", "1", "--circuit", "circuits/nope"][..], "--circuit circuits/nope: this config has no such circuit; it has circuits/transcoder-topk-k32/d256/s0"),
        (&["circuit", "--image", "1", "--set", "circuits.node_threshold=1.5"][..], "circuits.node_threshold is 1.5; it must be between 0 and 1"),
    ] {
        let refused = circuits(store.path(), args);
        assert!(!refused.ok && refused.stderr.contains(says), "{args:?}: {}", refused.stderr);
    }
    let none = xtask(store.path(), &["circuit", "--image", "1"]);
    assert!(
        !none.ok && none.stderr.contains("this config has no circuit"),
        "{}",
        none.stderr
    );
}
