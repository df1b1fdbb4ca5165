//! The kernel's layering rule (guest-kernel/README.md), checked on its source: the files of
//! `guest-kernel/kernel/src` refer to one another (`crate::…`, `super::…` paths) without a
//! cycle, nothing refers to the crate root (`main.rs`, which may use everything), and the
//! top-level layers refer only downward in the order the README draws.
//!
//! A module is a file (`objects/ipc.rs` is `objects::ipc`, `objects/mod.rs` is `objects`);
//! `mod x;` declarations are not references, `pub use x::*` re-exports are followed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules, lowest first: each may refer only to itself and those before it.
/// `mm::frames` and `mm::physmap` (the frame allocator and the direct map) sit below `arch`,
/// whose page-table code allocates from them; the rest of `mm` sits above `arch`.
const LAYERS: &[&str] = &[
    "sync",
    "mm::physmap",
    "mm::frames",
    "arch",
    "console",
    "panic",
    "time",
    "bootinfo",
    "mm",
    "image",
    "kernel",
    "loader",
    "objects",
    "devices",
    "dispatch",
    "selftest",
];

/// Crate-root names that are macros (`#[macro_export]`), not references to `main.rs`.
const ROOT_MACROS: &[&str] = &["kprint", "kprintln"];

/// The kernel's source (`FLUKE_KERNEL_SRC` overrides it, to check another tree).
fn kernel_src() -> PathBuf {
    match std::env::var_os("FLUKE_KERNEL_SRC") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernel/src"),
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read kernel source dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `objects/ipc.rs` -> `objects::ipc`; `objects/mod.rs` -> `objects`; `main.rs` -> ``.
fn module_name(rel: &Path) -> String {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "main" {
        parts.push(stem.to_string());
    }
    parts.join("::")
}

/// The source without comments (doc comments name modules in prose) and string literals.
fn strip(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Parses a path tree at `s[i..]` (after a `crate`/`super`/`self` head already in
/// `prefix`): segments joined by `::`, possibly ending in `{tree, tree, ...}`.
fn parse_tree(s: &[u8], mut i: usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix;
    loop {
        // Expect `::` to continue.
        let mut j = i;
        while j < s.len() && s[j] == b' ' {
            j += 1;
        }
        if !(s.get(j) == Some(&b':') && s.get(j + 1) == Some(&b':')) {
            out.push(path);
            return i;
        }
        j += 2;
        while j < s.len() && (s[j] as char).is_whitespace() {
            j += 1;
        }
        if s.get(j) == Some(&b'{') {
            j += 1;
            loop {
                while j < s.len() && ((s[j] as char).is_whitespace() || s[j] == b',') {
                    j += 1;
                }
                if s.get(j) == Some(&b'}') || j >= s.len() {
                    return j + 1;
                }
                let start = j;
                while j < s.len() && (is_ident(s[j]) || s[j] == b'*') {
                    j += 1;
                }
                let seg = String::from_utf8_lossy(&s[start..j]).into_owned();
                let mut sub = path.clone();
                if seg != "self" {
                    sub.push(seg);
                }
                j = parse_tree(s, j, sub, out);
                // Skip an `as name` rename.
                while j < s.len() && !matches!(s[j], b',' | b'}') {
                    j += 1;
                }
            }
        }
        let start = j;
        while j < s.len() && (is_ident(s[j]) || s[j] == b'*') {
            j += 1;
        }
        if start == j {
            out.push(path);
            return j;
        }
        path.push(String::from_utf8_lossy(&s[start..j]).into_owned());
        i = j;
    }
}

/// Every `crate::`/`super::`/`self::` path in `src`, as absolute segment lists.
fn paths(src: &str, module: &str) -> Vec<Vec<String>> {
    let s = src.as_bytes();
    let mut out = Vec::new();
    let here: Vec<String> = if module.is_empty() {
        Vec::new()
    } else {
        module.split("::").map(String::from).collect()
    };
    let mut i = 0;
    while i < s.len() {
        let boundary = i == 0 || !(is_ident(s[i - 1]) || s[i - 1] == b':' || s[i - 1] == b'$');
        let head = ["crate", "super", "self"].into_iter().find(|h| {
            boundary && s[i..].starts_with(h.as_bytes()) && s[i + h.len()..].starts_with(b"::")
        });
        let Some(head) = head else {
            i += 1;
            continue;
        };
        let mut base = match head {
            "crate" => Vec::new(),
            "self" => here.clone(),
            _ => here[..here.len().saturating_sub(1)].to_vec(),
        };
        let mut j = i + head.len();
        // `super::super::...`
        while head == "super" && s[j..].starts_with(b"::super") && !is_ident(s[j + 7]) {
            base.pop();
            j += 7;
        }
        let mut found = Vec::new();
        j = parse_tree(s, j, base, &mut found);
        out.extend(found);
        i = j.max(i + 1);
    }
    out
}

struct Crate {
    /// Module name -> its (stripped) source.
    modules: BTreeMap<String, String>,
    /// Module -> child modules it glob re-exports (`pub use x86_64::*`).
    globs: BTreeMap<String, Vec<String>>,
}

impl Crate {
    fn load() -> Crate {
        let root = kernel_src();
        let mut files = Vec::new();
        rust_files(&root, &mut files);
        let mut modules = BTreeMap::new();
        let mut globs: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for f in files {
            let rel = f.strip_prefix(&root).expect("under src");
            let name = module_name(rel);
            let src = strip(&std::fs::read_to_string(&f).expect("read source"));
            for line in src.lines() {
                let t = line.trim();
                if let Some(rest) = t
                    .strip_prefix("pub use ")
                    .and_then(|r| r.strip_suffix("::*;"))
                {
                    if is_ident_str(rest) {
                        let child = if name.is_empty() {
                            rest.to_string()
                        } else {
                            format!("{name}::{rest}")
                        };
                        globs.entry(name.clone()).or_default().push(child);
                    }
                }
            }
            modules.insert(name, src);
        }
        Crate { modules, globs }
    }

    /// The module a path refers to: the longest prefix that is a module, following glob
    /// re-exports. `None`: a root macro.
    fn resolve(&self, path: &[String]) -> Option<String> {
        let mut current = String::new();
        for seg in path {
            let candidate = join(&current, seg);
            if self.modules.contains_key(&candidate) {
                current = candidate;
                continue;
            }
            let via_glob = self.globs.get(&current).and_then(|children| {
                children
                    .iter()
                    .map(|c| join(c, seg))
                    .find(|m| self.modules.contains_key(m))
            });
            match via_glob {
                Some(m) => current = m,
                None => {
                    if current.is_empty() && ROOT_MACROS.contains(&seg.as_str()) {
                        return None;
                    }
                    break;
                }
            }
        }
        Some(current)
    }

    /// Module -> the other modules its source refers to.
    fn edges(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut edges = BTreeMap::new();
        for (name, src) in &self.modules {
            let mut to = BTreeSet::new();
            for p in paths(src, name) {
                if let Some(target) = self.resolve(&p) {
                    if &target != name {
                        to.insert(target);
                    }
                }
            }
            edges.insert(name.clone(), to);
        }
        edges
    }
}

fn is_ident_str(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_ident)
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}::{b}")
    }
}

/// The layer a module belongs to: the longest entry of LAYERS that is it or contains it.
fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .enumerate()
        .filter(|(_, l)| module == **l || module.starts_with(&format!("{l}::")))
        .max_by_key(|(_, l)| l.len())
        .map(|(i, _)| i)
}

fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    // 0 unvisited, 1 on the stack, 2 done.
    let mut state: BTreeMap<&str, u8> = BTreeMap::new();
    fn visit<'a>(
        n: &'a str,
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        state.insert(n, 1);
        stack.push(n);
        for m in edges.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|s| *s == m).unwrap_or(0);
                    let mut cycle: Vec<String> =
                        stack[from..].iter().map(|s| s.to_string()).collect();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(m, edges, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n, 2);
        None
    }
    for n in edges.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            let mut stack = Vec::new();
            if let Some(c) = visit(n, edges, &mut state, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn the_parser_sees_use_trees_and_super_paths() {
    let src = strip("use super::object::{name_of, value}; use crate::kernel::{self, sched::{self, Next}};\n// crate::nothing\nlet x = crate::mm::phys_to_virt(1);");
    let mut p = paths(&src, "objects::port");
    p.sort();
    let want: Vec<Vec<String>> = [
        "kernel",
        "kernel::sched",
        "kernel::sched::Next",
        "mm::phys_to_virt",
        "objects::object::name_of",
        "objects::object::value",
    ]
    .iter()
    .map(|s| s.split("::").map(String::from).collect())
    .collect();
    assert_eq!(p, want);
}

#[test]
fn a_cycle_is_found() {
    let mut e: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    e.insert("a".into(), ["b".to_string()].into());
    e.insert("b".into(), ["c".to_string()].into());
    e.insert("c".into(), ["a".to_string()].into());
    assert_eq!(find_cycle(&e).map(|c| c.len()), Some(4));
    e.insert("c".into(), BTreeSet::new());
    assert_eq!(find_cycle(&e), None);
}

#[test]
fn kernel_modules_import_without_a_cycle() {
    let krate = Crate::load();
    assert!(
        krate.modules.len() > 30,
        "found only {:?}",
        krate.modules.keys()
    );
    let edges = krate.edges();
    let references: usize = edges.values().map(BTreeSet::len).sum();
    assert!(
        references > 50,
        "the parser found only {references} references"
    );
    if let Some(cycle) = find_cycle(&edges) {
        panic!(
            "import cycle in guest-kernel/kernel/src: {}",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn kernel_layers_import_only_downward() {
    let krate = Crate::load();
    let mut wrong = Vec::new();
    for (from, tos) in krate.edges() {
        if from.is_empty() {
            continue; // main.rs: boot, may use everything
        }
        let Some(lf) = layer_of(&from) else {
            wrong.push(format!("{from}: not in any layer of LAYERS"));
            continue;
        };
        for to in tos {
            if to.is_empty() {
                wrong.push(format!("{from} -> the crate root (main.rs)"));
                continue;
            }
            match layer_of(&to) {
                Some(lt) if lt <= lf => {}
                _ => wrong.push(format!("{from} -> {to}")),
            }
        }
    }
    assert!(wrong.is_empty(), "upward references:\n{}", wrong.join("\n"));
}
