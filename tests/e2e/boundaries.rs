//! The boundaries of ARCHITECTURE.md, checked on the workspace's sources: only `sandbox` uses
//! wasmtime, only `state` uses redb, only `source` and `sink` use broker clients — in the code
//! (`.rs` files) and in the manifests (`Cargo.toml` dependencies).
//!
//! Every `.rs` file of the workspace is read, its comments and string literals stripped by a
//! small tokenizer, and a use of a guarded crate — a path `ident::…`, `use ident`, `extern
//! crate ident` — outside the modules allowed to use it fails the test, naming file and line.
//! Exempt: test code (`tests/`, and every file a `#[cfg(test)] mod name;` declares), and the
//! benchmarks (the top-level `bench/` crate), which drive
//! brokers and the store directly to measure them.
//!
//! No brokers and no binary needed: these tests only read files.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use weir_e2e::workspace;

/// A guarded crate: the name code uses, the name manifests use, and the only folders whose code
/// may use it.
struct Guarded {
    ident: &'static str,
    package: &'static str,
    allowed: &'static [&'static str],
}

const GUARDED: &[Guarded] = &[
    Guarded { ident: "wasmtime", package: "wasmtime", allowed: &["host/src/sandbox/"] },
    Guarded { ident: "wasmtime_wasi", package: "wasmtime-wasi", allowed: &["host/src/sandbox/"] },
    Guarded { ident: "redb", package: "redb", allowed: &["host/src/state/"] },
    Guarded { ident: "rumqttc", package: "rumqttc", allowed: &["host/src/source/", "host/src/sink/"] },
    Guarded {
        ident: "async_nats",
        package: "async-nats",
        allowed: &["host/src/source/", "host/src/sink/", "host/src/fleet/central.rs"],
    },
    Guarded { ident: "axum", package: "axum", allowed: &["host/src/observe/"] },
    Guarded {
        ident: "metrics_exporter_prometheus",
        package: "metrics-exporter-prometheus",
        allowed: &["host/src/observe/"],
    },
];

/// Code exempt from the source check (paths relative to the workspace, `/`-separated).
const EXEMPT: &[&str] = &["tests/", "bench/"];

/// Packages that may depend on the guarded crates: the host, the end-to-end tests, the
/// benchmarks.
const MAY_DEPEND: &[&str] = &["weir-host", "weir-e2e", "weir-bench"];

/// Folders never read: build output, version control.
const SKIPPED_DIRS: &[&str] = &["target", ".git"];

/// One use of a guarded crate where the architecture does not allow it.
#[derive(Debug, PartialEq, Eq)]
struct Violation {
    file: String,
    line: usize,
    what: String,
}

#[test]
fn wasmtime_redb_and_broker_clients_are_used_only_inside_their_modules() -> Result<()> {
    let root = workspace();
    let files = files_named(&root, |name| name.ends_with(".rs"))?;
    let test_files = cfg_test_files(&root, &files)?;
    let mut violations = Vec::new();
    for file in &files {
        let relative = relative(&root, file);
        if EXEMPT.iter().any(|exempt| relative.starts_with(exempt))
            || test_files.iter().any(|t| relative.starts_with(t))
        {
            continue;
        }
        let source = std::fs::read_to_string(file).with_context(|| format!("cannot read {relative}"))?;
        violations.extend(source_violations(&relative, &source));
    }
    assert!(violations.is_empty(), "{}", report(&violations, "code"));
    Ok(())
}

#[test]
fn only_the_host_the_tests_and_the_benchmarks_depend_on_wasmtime_redb_or_broker_clients() -> Result<()> {
    let root = workspace();
    let mut violations = Vec::new();
    for manifest in files_named(&root, |name| name == "Cargo.toml")? {
        let relative = relative(&root, &manifest);
        let text = std::fs::read_to_string(&manifest).with_context(|| format!("cannot read {relative}"))?;
        violations.extend(manifest_violations(&relative, &text)?);
    }
    assert!(violations.is_empty(), "{}", report(&violations, "manifest"));
    Ok(())
}

/// The failure message: one line per violation, then the rule.
fn report(violations: &[Violation], kind: &str) -> String {
    let mut message = format!("{} boundary violation(s) in {kind}:\n", violations.len());
    for v in violations {
        let _ = writeln!(message, "  {}:{}: {}", v.file, v.line, v.what);
    }
    message.push_str(
        "the boundaries (ARCHITECTURE.md, Boundary): only host/src/sandbox/ uses wasmtime and wasmtime-wasi, \
         only host/src/state/ uses redb, only host/src/source/ and host/src/sink/ use rumqttc and async-nats (and the fleet's buckets, \
         host/src/fleet/central.rs, async-nats), only host/src/observe/ uses axum and metrics-exporter-prometheus; \
         only weir-host, weir-e2e and the bench crate depend on them",
    );
    message
}

/// Uses of guarded crates in one file's code outside the folders allowed to use them.
fn source_violations(file: &str, source: &str) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (line, ident, how) in crate_uses(&tokens(source)) {
        let Some(guarded) = GUARDED.iter().find(|g| g.ident == ident) else { continue };
        if guarded.allowed.iter().any(|allowed| file.starts_with(allowed)) {
            continue;
        }
        violations.push(Violation {
            file: file.to_owned(),
            line,
            what: format!("{how} `{ident}`, which only {} may use", guarded.allowed.join(" and ")),
        });
    }
    violations
}

/// Dependencies on guarded crates of a package that may not have them.
fn manifest_violations(file: &str, text: &str) -> Result<Vec<Violation>> {
    let manifest: toml::Table = text.parse().with_context(|| format!("{file} is not TOML"))?;
    let Some(package) = manifest.get("package").and_then(|p| p.get("name")).and_then(toml::Value::as_str) else {
        return Ok(Vec::new()); // the workspace manifest declares versions, it depends on nothing
    };
    let in_bench_dir = file == "bench/Cargo.toml";
    if MAY_DEPEND.contains(&package) || in_bench_dir {
        return Ok(Vec::new());
    }
    let mut tables: Vec<(&str, &toml::Table)> = Vec::new();
    for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
        if let Some(table) = manifest.get(section).and_then(toml::Value::as_table) {
            tables.push((section, table));
        }
    }
    for target in manifest.get("target").and_then(toml::Value::as_table).into_iter().flat_map(|t| t.values()) {
        for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
            if let Some(table) = target.get(section).and_then(toml::Value::as_table) {
                tables.push((section, table));
            }
        }
    }
    let mut violations = Vec::new();
    for (section, table) in tables {
        for (key, spec) in table {
            let crate_name = spec.get("package").and_then(toml::Value::as_str).unwrap_or(key);
            let Some(guarded) = GUARDED.iter().find(|g| g.package == crate_name) else { continue };
            violations.push(Violation {
                file: file.to_owned(),
                line: line_of_key(text, key),
                what: format!(
                    "package {package} has `{key}` in [{section}]: only {} may depend on {}",
                    MAY_DEPEND.join(", "),
                    guarded.package
                ),
            });
        }
    }
    Ok(violations)
}

/// The line (1-based) declaring dependency `key`: `key = …`, `key.workspace = …` or
/// `[….key]`; 0 when not found.
fn line_of_key(text: &str, key: &str) -> usize {
    text.lines()
        .position(|line| {
            let line = line.trim();
            line.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with(['=', '.']))
                || (line.starts_with('[') && line.trim_end_matches(']').ends_with(&format!(".{key}")))
        })
        .map_or(0, |i| i + 1)
}

/// Every file under `root` whose name `wanted` accepts, skipping build output and hidden
/// folders, sorted.
fn files_named(root: &Path, wanted: impl Fn(&str) -> bool) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let kind = entry.file_type()?;
            if kind.is_dir() {
                if !name.starts_with('.') && !SKIPPED_DIRS.contains(&name.as_str()) {
                    dirs.push(entry.path());
                }
            } else if kind.is_file() && wanted(&name) {
                found.push(entry.path());
            }
        }
    }
    found.sort();
    Ok(found)
}

fn relative(root: &Path, file: &Path) -> String {
    file.strip_prefix(root).unwrap_or(file).to_string_lossy().replace('\\', "/")
}

/// Files (or module folders, ending in `/`) declared by `#[cfg(test)] mod name;`, relative to
/// the workspace.
fn cfg_test_files(root: &Path, files: &[PathBuf]) -> Result<BTreeSet<String>> {
    let mut test_files = BTreeSet::new();
    for file in files {
        let source = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
        let tokens = tokens(&source);
        for (i, window) in tokens.windows(7).enumerate() {
            let texts: Vec<&str> = window.iter().map(|t| t.text.as_str()).collect();
            if texts != ["#", "[", "cfg", "(", "test", ")", "]"] {
                continue;
            }
            // Skip further attributes and a visibility up to `mod name ;`.
            let text = |j: usize| tokens.get(j).map_or("", |t| t.text.as_str());
            let mut j = i + 7;
            loop {
                if text(j) == "#" && text(j + 1) == "[" {
                    let mut depth = 0;
                    while j < tokens.len() {
                        depth += i32::from(text(j) == "[") - i32::from(text(j) == "]");
                        j += 1;
                        if depth == 0 && text(j - 1) == "]" {
                            break;
                        }
                    }
                } else if ["pub", "(", "crate", "super", "self", "in", ")"].contains(&text(j)) {
                    j += 1;
                } else {
                    break;
                }
            }
            let (name, semicolon) = (text(j + 1), text(j + 2));
            if text(j) != "mod" || semicolon != ";" {
                continue;
            }
            let here = file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let dir = match here {
                "mod.rs" | "lib.rs" | "main.rs" => file.parent().unwrap_or(root).to_owned(),
                _ => file.with_extension(""),
            };
            test_files.insert(relative(root, &dir.join(format!("{name}.rs"))));
            test_files.insert(format!("{}/", relative(root, &dir.join(name))));
        }
    }
    Ok(test_files)
}

/// A token of Rust code: an identifier, `::`, or one other punctuation character. Comments,
/// string, character and number literals and lifetimes yield none.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Token {
    line: usize,
    text: String,
}

/// The tokens of `source`, with comments and literals stripped.
fn tokens(source: &str) -> Vec<Token> {
    let chars: Vec<char> = source.chars().collect();
    let mut tokens = Vec::new();
    let mut line = 1;
    let mut i = 0;
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && at(i + 1) == '/' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    line += usize::from(chars[i] == '\n');
                    i += 1;
                }
            }
        } else if c == '"' {
            i = skip_string(&chars, i + 1, &mut line);
        } else if c == '\'' {
            i = skip_char_or_lifetime(&chars, i);
        } else if c.is_ascii_digit() {
            while at(i).is_ascii_alphanumeric() || at(i) == '_' {
                i += 1;
            }
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while at(i).is_alphanumeric() || at(i) == '_' {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            match (word.as_str(), at(i)) {
                // Raw strings: r"…", r#"…"#, br"…", cr#"…"#.
                ("r" | "br" | "cr", '"' | '#') if raw_string_starts(&chars, i) => {
                    i = skip_raw_string(&chars, i, &mut line);
                }
                // Byte and C strings, byte characters.
                ("b" | "c", '"') => i = skip_string(&chars, i + 1, &mut line),
                ("b", '\'') => i = skip_char_or_lifetime(&chars, i),
                // A raw identifier: r#name.
                ("r", '#') => {
                    let start = i + 1;
                    i = start;
                    while at(i).is_alphanumeric() || at(i) == '_' {
                        i += 1;
                    }
                    tokens.push(Token { line, text: chars[start..i].iter().collect() });
                }
                _ => tokens.push(Token { line, text: word }),
            }
        } else if c == ':' && at(i + 1) == ':' {
            tokens.push(Token { line, text: "::".to_owned() });
            i += 2;
        } else {
            tokens.push(Token { line, text: c.to_string() });
            i += 1;
        }
    }
    tokens
}

/// Past the closing quote of a string whose content starts at `i`.
fn skip_string(chars: &[char], mut i: usize, line: &mut usize) -> usize {
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            '"' => return i + 1,
            c => {
                *line += usize::from(c == '\n');
                i += 1;
            }
        }
    }
    i
}

/// Whether `#`s then `"` start at `i` (after an `r` prefix).
fn raw_string_starts(chars: &[char], mut i: usize) -> bool {
    while chars.get(i) == Some(&'#') {
        i += 1;
    }
    chars.get(i) == Some(&'"')
}

/// Past the end of a raw string whose `#`s (or quote) start at `i`.
fn skip_raw_string(chars: &[char], mut i: usize, line: &mut usize) -> usize {
    let mut hashes = 0;
    while chars.get(i) == Some(&'#') {
        hashes += 1;
        i += 1;
    }
    i += 1; // the opening quote
    while i < chars.len() {
        if chars[i] == '"' && (1..=hashes).all(|k| chars.get(i + k) == Some(&'#')) {
            return i + 1 + hashes;
        }
        *line += usize::from(chars[i] == '\n');
        i += 1;
    }
    i
}

/// Past a character literal (`'a'`, `'\n'`, `'\u{1F600}'`) or a lifetime or label (`'a`)
/// starting with the quote at `i`.
fn skip_char_or_lifetime(chars: &[char], i: usize) -> usize {
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    if at(i + 1) == '\\' {
        let mut end = i + 3;
        while end < chars.len() && chars[end] != '\'' {
            end += 1;
        }
        return end + 1;
    }
    if at(i + 2) == '\'' {
        return i + 3;
    }
    let mut end = i + 1;
    while at(end).is_alphanumeric() || at(end) == '_' {
        end += 1;
    }
    end
}

/// Every crate named as a path root (`name::…`, `::name::…`), by `use name` or by
/// `extern crate name`: (line, name, how).
fn crate_uses(tokens: &[Token]) -> Vec<(usize, String, &'static str)> {
    let text = |i: usize| tokens.get(i).map_or("", |t| t.text.as_str());
    let is_ident = |s: &str| s.starts_with(|c: char| c.is_alphabetic() || c == '_');
    let mut uses = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        if !is_ident(&token.text) {
            continue;
        }
        let before = if i == 0 { "" } else { text(i - 1) };
        // `a::name::…` names an item inside `a`, not the crate.
        let inner = before == "::" && i >= 2 && (is_ident(text(i - 2)) || text(i - 2) == ">");
        if text(i + 1) == "::" && !inner {
            uses.push((token.line, token.text.clone(), "path"));
        } else if before == "use" || (before == "::" && i >= 2 && text(i - 2) == "use") {
            uses.push((token.line, token.text.clone(), "use of"));
        } else if before == "crate" && i >= 2 && text(i - 2) == "extern" {
            uses.push((token.line, token.text.clone(), "extern crate"));
        }
    }
    uses
}

/// The tokenizer strips what is not code, and a use is reported with its file and line.
#[test]
fn the_boundary_check_sees_code_only_and_names_file_and_line() {
    let source = r####"
//! Uses redb::Database in a doc comment.
/* block comment: redb::Database /* nested: wasmtime::Engine */ still comment: rumqttc::Client */
const FILE: &str = "weir.redb and redb::Database in a string";
const RAW: &str = r#"a raw "string" naming redb::Database"#;
const BYTES: &[u8] = br##"bytes: redb::x "# still"##;
const QUOTE: char = '"'; const ESCAPED: char = '\''; fn f<'a>(x: &'a str) -> &'a str { x }
fn g() { let redb = 1; let _ = redb; let _ = state.redb; let _ = crate::state::redb::X; }
use redb::ReadableTable;
fn h() { let _ = ::wasmtime_wasi::p2::add_to_linker_sync; }
extern crate rumqttc;
use async_nats;
"####;
    let violations = source_violations("host/src/pipeline.rs", source);
    let found: Vec<(usize, &str)> = violations.iter().map(|v| (v.line, v.what.as_str())).collect();
    assert_eq!(
        found,
        vec![
            (9, "path `redb`, which only host/src/state/ may use"),
            (10, "path `wasmtime_wasi`, which only host/src/sandbox/ may use"),
            (11, "extern crate `rumqttc`, which only host/src/source/ and host/src/sink/ may use"),
            (
                12,
                "use of `async_nats`, which only host/src/source/ and host/src/sink/ and host/src/fleet/central.rs may use"
            ),
        ]
    );
    assert!(source_violations("host/src/state/mod.rs", source).iter().all(|v| !v.what.contains("`redb`")));
    assert!(
        report(&violations, "code").contains("host/src/pipeline.rs:9: path `redb`"),
        "{}",
        report(&violations, "code")
    );
}

/// A manifest dependency, also renamed or under a target, is reported with its line.
#[test]
fn the_dependency_check_names_the_manifest_line() -> Result<()> {
    let manifest = r#"
[package]
name = "weir-record"

[dependencies]
serde.workspace = true
redb.workspace = true

[target.'cfg(unix)'.dev-dependencies]
mqtt = { package = "rumqttc", version = "0.25" }
"#;
    let violations = manifest_violations("record/Cargo.toml", manifest)?;
    let found: Vec<(usize, &str)> = violations.iter().map(|v| (v.line, v.what.as_str())).collect();
    assert_eq!(found.len(), 2, "{violations:?}");
    assert_eq!(found[0].0, 7);
    assert!(found[0].1.starts_with("package weir-record has `redb` in [dependencies]"), "{}", found[0].1);
    assert_eq!(found[1].0, 10);
    assert!(found[1].1.contains("`mqtt` in [dev-dependencies]") && found[1].1.ends_with("rumqttc"), "{}", found[1].1);
    assert!(manifest_violations("host/Cargo.toml", &manifest.replace("weir-record", "weir-host"))?.is_empty());
    Ok(())
}
