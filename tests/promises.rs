//! Keeps tests/PROMISES.md honest: every row quotes README.md, in the section it stands
//! under, and names tests that exist. A promise reworded or dropped from README.md, a row
//! with no test, or a test renamed or moved fails here.

use std::fs;
use std::path::Path;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The sections of README.md whose promises the map covers.
const SECTIONS: [&str; 4] = [
    "The wire contract",
    "Coming back: resumable sessions",
    "Limits and errors",
    "More than one machine",
];

/// One row of the map.
struct Row {
    /// Line number in PROMISES.md, for messages.
    line: usize,
    section: String,
    says: String,
    tests: Vec<String>,
}

fn read(path: &str) -> String {
    fs::read_to_string(Path::new(ROOT).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Words as a reader sees them: no Markdown emphasis or code marks, spaces collapsed.
fn words(text: &str) -> String {
    text.replace("**", "")
        .replace('`', "")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The text under each `## ` heading of a Markdown file.
fn sections(markdown: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in markdown.lines() {
        if let Some(title) = line.strip_prefix("## ") {
            out.push((title.trim().to_owned(), String::new()));
        } else if let Some((_, body)) = out.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    out
}

fn rows() -> Vec<Row> {
    let map = read("tests/PROMISES.md");
    let mut section = String::new();
    let mut rows = Vec::new();
    for (i, line) in map.lines().enumerate() {
        if let Some(title) = line.strip_prefix("## ") {
            section = title.trim().to_owned();
            continue;
        }
        if !line.starts_with('|') || line.starts_with("|---") || line.starts_with("| README says") {
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        assert_eq!(
            cells.len(),
            5,
            "PROMISES.md:{}: a row has three cells: {line}",
            i + 1
        );
        rows.push(Row {
            line: i + 1,
            section: section.clone(),
            says: cells[1].to_owned(),
            tests: cells[3]
                .split("<br>")
                .map(|t| t.trim().trim_matches('`').to_owned())
                .filter(|t| !t.is_empty())
                .collect(),
        });
    }
    rows
}

#[test]
fn the_map_covers_each_promise_section_of_the_readme() {
    let readme: Vec<String> = sections(&read("README.md"))
        .into_iter()
        .map(|s| s.0)
        .collect();
    let rows = rows();
    for section in SECTIONS {
        assert!(
            readme.iter().any(|s| s == section),
            "README.md has no section {section:?}"
        );
        assert!(
            rows.iter().any(|r| r.section == section),
            "PROMISES.md has no rows under {section:?}"
        );
    }
    for row in &rows {
        assert!(
            SECTIONS.contains(&row.section.as_str()),
            "PROMISES.md:{}: under {:?}, not one of {SECTIONS:?}",
            row.line,
            row.section
        );
    }
}

/// The promises README.md lists one by one: each row of a table (but its header), and each
/// bullet with the lines that continue it.
fn listed_promises(section: &str) -> Vec<String> {
    let mut items: Vec<String> = Vec::new();
    let mut in_bullet = false;
    let lines: Vec<&str> = section.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with('|') {
            in_bullet = false;
            let next = lines.get(i + 1).copied().unwrap_or("");
            let header = next.starts_with("|---") || line.starts_with("|---");
            if !header {
                items.push(words(line));
            }
        } else if line.starts_with("- ") {
            in_bullet = true;
            items.push(words(line));
        } else if in_bullet && line.starts_with("  ") {
            if let Some(item) = items.last_mut() {
                item.push(' ');
                item.push_str(&words(line));
            }
        } else {
            in_bullet = false;
        }
    }
    items
}

#[test]
fn every_promise_listed_in_the_readme_has_a_row() {
    let readme = sections(&read("README.md"));
    let rows = rows();
    for (title, body) in readme.iter().filter(|s| SECTIONS.contains(&s.0.as_str())) {
        for promise in listed_promises(body) {
            assert!(
                rows.iter()
                    .any(|r| r.section == *title && promise.contains(&words(&r.says))),
                "README.md's {title:?} promises {promise:?}, and no row of PROMISES.md quotes it"
            );
        }
    }
}

#[test]
fn every_row_quotes_its_readme_section_word_for_word() {
    let readme = sections(&read("README.md"));
    for row in rows() {
        assert!(
            !row.says.is_empty(),
            "PROMISES.md:{}: no promise quoted",
            row.line
        );
        let body = readme
            .iter()
            .find(|(title, _)| *title == row.section)
            .map(|(_, body)| words(body))
            .unwrap_or_default();
        assert!(
            body.contains(&words(&row.says)),
            "PROMISES.md:{}: README.md's {:?} no longer says {:?}",
            row.line,
            row.section,
            row.says
        );
    }
}

#[test]
fn every_row_names_a_test_and_every_test_named_exists() {
    for row in rows() {
        assert!(
            !row.tests.is_empty(),
            "PROMISES.md:{}: no test for {:?}",
            row.line,
            row.says
        );
        for test in &row.tests {
            let at = format!("PROMISES.md:{}: {test}", row.line);
            match test.split_once("::") {
                // A script: it must be there.
                None => assert!(
                    test.ends_with(".sh") && Path::new(ROOT).join(test).is_file(),
                    "{at}: no such script"
                ),
                Some((file, name)) => assert_test_fn(&read(file), name, &at),
            }
        }
    }
}

/// `source` defines `fn name(` exactly once, and it is a `#[test]`.
fn assert_test_fn(source: &str, name: &str, at: &str) {
    let lines: Vec<&str> = source.lines().collect();
    let defined: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].trim_start().starts_with(&format!("fn {name}(")))
        .collect();
    assert_eq!(defined.len(), 1, "{at}: defined {} times", defined.len());
    let is_test = lines[..defined[0]]
        .iter()
        .rev()
        .map(|l| l.trim())
        .take_while(|l| l.starts_with("#[") || l.starts_with("//"))
        .any(|l| l == "#[test]");
    assert!(is_test, "{at}: not a #[test]");
}
