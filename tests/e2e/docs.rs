//! The documentation holds together: every relative link in every README resolves
//! (file and heading), and the chart README's values table names every value of
//! `values.yaml`, and nothing else.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every README.md of the repository, outside build outputs and tools.
fn readmes(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if !name.starts_with('.') && name != "target" && name != "node_modules" {
                readmes(&path, found);
            }
        } else if name == "README.md" {
            found.push(path);
        }
    }
}

/// The lines of a Markdown file outside fenced code blocks.
fn prose(text: &str) -> impl Iterator<Item = &str> {
    let mut fenced = false;
    text.lines().filter(move |line| {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            return false;
        }
        !fenced
    })
}

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    prose(text)
        .filter_map(|line| line.strip_prefix('#'))
        .map(|line| anchor(line.trim_start_matches('#')))
        .collect()
}

/// The targets of the inline links `[text](target)` in a line.
fn links(line: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let Some(end) = after.find(')') else { break };
        found.push(&after[..end]);
        rest = &after[end..];
    }
    found
}

#[test]
fn every_relative_link_in_every_readme_resolves() {
    let root = repository().canonicalize().unwrap();
    let mut files = Vec::new();
    readmes(&root, &mut files);
    assert!(files.len() >= 10, "the READMEs: {files:?}");
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let shown = file.strip_prefix(&root).unwrap().display().to_string();
        for line in prose(&text) {
            for target in links(line) {
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                checked += 1;
                let (path, fragment) = target.split_once('#').unwrap_or((target, ""));
                let resolved = if path.is_empty() {
                    file.clone()
                } else {
                    file.parent().unwrap().join(path)
                };
                if !resolved.exists() {
                    broken.push(format!("{shown}: {target} (no such file)"));
                    continue;
                }
                if !fragment.is_empty()
                    && resolved.extension().is_some_and(|e| e == "md")
                    && !anchors(&std::fs::read_to_string(&resolved).unwrap()).contains(fragment)
                {
                    broken.push(format!("{shown}: {target} (no such heading)"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(checked > 50, "only {checked} relative links found");
}

/// The dotted paths of the leaves of a values file (an empty map is a leaf).
fn leaves(value: &serde_yaml_ng::Value, prefix: &str, into: &mut BTreeSet<String>) {
    match value {
        serde_yaml_ng::Value::Mapping(map) if !map.is_empty() => {
            for (key, child) in map {
                let key = key.as_str().unwrap();
                let path = if prefix.is_empty() {
                    key.to_owned()
                } else {
                    format!("{prefix}.{key}")
                };
                leaves(child, &path, into);
            }
        }
        _ => {
            into.insert(prefix.to_owned());
        }
    }
}

#[test]
fn the_chart_readme_lists_every_value() {
    let chart = repository().join("helm/switchyard");
    let values: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(chart.join("values.yaml")).unwrap())
            .unwrap();
    let mut expected = BTreeSet::new();
    leaves(&values, "", &mut expected);
    let readme = std::fs::read_to_string(chart.join("README.md")).unwrap();
    let listed: BTreeSet<String> = readme
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once('`'))
        .map(|(key, _)| key.to_owned())
        .collect();
    assert_eq!(
        listed.symmetric_difference(&expected).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "keys missing from (or stale in) the values table of helm/switchyard/README.md"
    );
}
